"""Training: the step functions, optimizer, divergence guard, progress reporting and the loop."""

"""``python -m infini_jax.eval`` with a run's train flags: the held-out loss of its newest good
checkpoint (``evals.heldout.evaluate_checkpoint``), printed as one JSON line."""

from infini_jax.commands import gin_flags
from infini_jax.evals import heldout


def main(argv=None) -> dict:
  gin_flags.parse_command_line(argv)
  return heldout.evaluate_checkpoint(gin_flags.run_config())

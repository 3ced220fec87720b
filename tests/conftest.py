"""Test-session setup: JAX on the CPU.

The `tpu` extra installs libtpu (for compiling to TPU topologies, tests/test_tpu_compile.py). A
process that imports jax with no JAX_PLATFORMS probes that plugin, prints warnings and holds
libtpu's lock file, which another process compiling for a TPU topology then waits on. The tests run
on the CPU, and the TPU compiler works with JAX_PLATFORMS=cpu (see scripts/aot_check.py).
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

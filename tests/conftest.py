"""Test-session setup: JAX on the CPU.

The `tpu` extra installs libtpu (for compiling to TPU topologies, tests/test_tpu_compile.py). A
process that imports jax with no JAX_PLATFORMS probes that plugin, prints warnings and holds
libtpu's lock file, which another process compiling for a TPU topology then waits on. The tests run
on the CPU, and the TPU compiler works with JAX_PLATFORMS=cpu (see scripts/aot_check.py).
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The files whose tests take longest (CI's --durations), slowest first. They are collected first,
# so that the two xdist workers start on them and finish together instead of one worker running a
# three-minute test alone at the end. Order inside a file is kept.
SLOW_FIRST = ("test_passkey_e2e.py", "test_data_resume.py", "test_train.py", "test_sweep.py",
              "test_faults.py", "test_bench.py", "test_sharded_step.py", "test_step.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))

"""Test-session setup: JAX on the CPU.

The `tpu` extra installs libtpu (for compiling to TPU topologies, tests/test_tpu_compile.py). A
process that imports jax with no JAX_PLATFORMS probes that plugin, prints warnings and holds
libtpu's lock file, which another process compiling for a TPU topology then waits on. The tests run
on the CPU, and the TPU compiler works with JAX_PLATFORMS=cpu (see scripts/aot_check.py).

Many tests start the train or evaluation commands in subprocesses (resume, kill, two processes),
and each process would compile the same programs again. JAX's persistent compilation cache, shared
by the xdist workers and every subprocess through the environment, compiles each once: about half
the time of such a test. Its entries are keyed by the program, the compiler flags and the jax
version, so a stale entry is never used.
"""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

"""How every entry point runs: a user error is one line, the backends start quietly.

    if __name__ == "__main__":
      entry.run(main)

A :class:`~infini_jax.errors.UserError` (a bad flag, a config value its config rejects, a missing
or unreadable input) is printed as one ``error: ...`` line on stderr and the exit status is 2, as
for argparse's usage errors; ``--verbose`` adds its traceback. Any other exception is a bug:
Python's traceback and status 1. Needs neither gin nor TensorFlow, so the benchmarks use it too.
"""

import glob
import inspect
import os
import sys
import traceback

from infini_jax.errors import UserError, one_line

USER_ERROR_STATUS = 2


def run(main, argv=None, parses_help: bool = False):
  """Runs ``main(argv)`` as a command: exits 0 (or ``main``'s int), or 2 on a user error.

  ``--verbose`` is taken off ``argv`` wherever it is and prints a user error's traceback too.
  ``--help`` (or ``-h``) prints the docstring of ``main``'s module, the command's usage and own
  flags, and exits 0, unless ``parses_help`` (``main`` parses it itself, with argparse).
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  if not parses_help and ("--help" in argv or "-h" in argv):
    print(inspect.getdoc(sys.modules[main.__module__]), flush=True)
    sys.exit(0)
  verbose = "--verbose" in argv
  quiet_backends()
  try:
    status = main([a for a in argv if a != "--verbose"])
  except UserError as e:
    if verbose:
      traceback.print_exc()
    print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
    sys.exit(USER_ERROR_STATUS)
  sys.exit(status if isinstance(status, int) else 0)


def quiet_backends() -> None:
  """Keeps the backends' startup noise off a user's terminal; what the user set stays as set.

  On a machine without an accelerator JAX is pointed at the CPU (``JAX_PLATFORMS=cpu``) instead
  of probing TPU and GPU plugins, whose failures print alarming lines, and TensorFlow (the data
  pipeline, on the CPU) logs no native errors: its "failed call to cuInit" says only that there
  is no GPU. Elsewhere only TensorFlow's and XLA's native INFO lines are hidden.
  """
  accelerator = _has_accelerator()
  level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
  if level is None or (level == "1" and "jax" in sys.modules):   # 1: what importing jax sets
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "1" if accelerator else "3"
  if not accelerator and "JAX_PLATFORMS" not in os.environ:
    os.environ["JAX_PLATFORMS"] = "cpu"   # read by a later jax import and by child processes
    if "jax" in sys.modules:              # imported, but no backend has started yet
      sys.modules["jax"].config.update("jax_platforms", "cpu")


def _has_accelerator() -> bool:
  """A TPU (any Google PCI device), an NVIDIA or AMD GPU, or not Linux (then we cannot tell)."""
  if not sys.platform.startswith("linux"):
    return True
  for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
    with open(vendor) as f:
      if f.read().strip() == "0x1ae0":
        return True
  return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/dev/kfd"))

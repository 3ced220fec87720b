"""TensorFlow, imported without the native log lines of its start-up.

Without CUDA drivers, ``import tensorflow`` prints "Could not find cuda drivers on your machine,
GPU will not be used" twice, each after absl's "All log messages before absl::InitializeLog() is
called are written to STDERR"; on CPUs with AVX512-VNNI, AVX512-BF16 or AMX, where TensorFlow
turns oneDNN on by default, it also prints "oneDNN custom operations are on" twice. These come from
C++ static initialisers that run before any setting (``TF_CPP_MIN_LOG_LEVEL``) applies. The data
modules that need TensorFlow import this module first: it imports TensorFlow with stderr captured
at the file-descriptor level and writes back every line but those.
"""

import contextlib
import os
import re
import sys
import tempfile

NOISE = re.compile(r"cudart_stub\.cc|absl::InitializeLog\(\) is called|"
                   r"port\.cc:\d+\] oneDNN custom operations are on")


@contextlib.contextmanager
def native_stderr_without(noise: re.Pattern):
  """Inside the block, lines written to file descriptor 2 (by C++ or Python) that match
  ``noise`` are dropped; the others are written to stderr, in order, when the block ends."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      kept = [line for line in captured.read().decode(errors="replace").splitlines(True)
              if not noise.search(line)]
      sys.stderr.write("".join(kept))
      sys.stderr.flush()


if "tensorflow" not in sys.modules:
  with native_stderr_without(NOISE):
    import tensorflow  # noqa: F401

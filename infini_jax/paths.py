"""Where a run's files live: a local folder or a bucket (``gs://bucket/run``), through one layer.

Every file a run writes or reads (config.gin, metrics.jsonl, TensorBoard events, evaluation
outputs, sweep records) goes through these functions; checkpoints go through orbax, which uses
the same ``etils.epath``. A plain ``open``/``os.makedirs`` on ``gs://b/run`` would quietly write
into a local folder named ``gs:``, lost with the VM.

Buckets are reached through ``gcsfs`` (fsspec). epath would otherwise pick TensorFlow's GCS
client whenever TensorFlow is installed; that client cannot be pointed at anything but Google's
endpoint, so it is not what the tests exercise (``EPATH_USE_TF=true`` still selects it). gcsfs
honours ``STORAGE_EMULATOR_HOST``; the tests run against a local GCS emulator.

A bucket holds whole objects: nothing can be appended to one, and an object being written is
invisible until it is complete. :class:`Appender` therefore keeps the file's bytes and uploads
them whole; a single upload is atomic, so :func:`write_text` needs no temporary file there.
"""

import os
import time

os.environ.setdefault("EPATH_USE_TF", "false")   # before epath first picks a backend (see above)

from etils import epath  # noqa: E402


def is_bucket(path) -> bool:
  """True for ``scheme://...`` paths (``gs://``), False for local ones."""
  return "://" in os.fspath(path)


def path(p) -> epath.Path:
  """``p`` as an ``epath.Path``; a local path is made absolute (a later chdir cannot move it).

  Joining strings needs no helper: ``os.path.join("gs://b/run", "x")`` is ``gs://b/run/x``; but
  ``os.path.abspath``/``normpath`` would turn ``gs://`` into ``gs:/``.
  """
  p = os.fspath(p)
  return epath.Path(p if is_bucket(p) else os.path.abspath(os.path.expanduser(p)))


def makedirs(p) -> epath.Path:
  """Creates the folder and its parents (a no-op prefix in a bucket); returns it."""
  p = path(p)
  p.mkdir(parents=True, exist_ok=True)
  return p


def exists(p) -> bool:
  return path(p).exists()


def isdir(p) -> bool:
  return path(p).is_dir()


def isfile(p) -> bool:
  p = path(p)
  return p.exists() and not p.is_dir()


def listdir(p) -> list[str]:
  """The names in folder ``p``, sorted."""
  return sorted(child.name for child in path(p).iterdir())


def open(p, mode: str = "r"):  # noqa: A001 - the builtin's name, for the same job
  """``open`` for r, w, rb, wb on either kind of path (to append, use :class:`Appender`)."""
  if "a" in mode or "+" in mode:
    raise ValueError(f"mode {mode!r} for {p}: a bucket cannot append or update in place; "
                     f"use paths.Appender to append")
  return path(p).open(mode)


def read_text(p) -> str:
  return path(p).read_text()


def write_text(p, text: str) -> None:
  """Replaces the file's contents at once: readers see the old or the new text, never a part."""
  write_bytes(p, text.encode())


def write_bytes(p, data: bytes) -> None:
  """Replaces the file's contents at once: readers see the old or the new bytes, never a part."""
  p = path(p)
  p.parent.mkdir(parents=True, exist_ok=True)
  if is_bucket(p):
    p.write_bytes(data)   # an object appears only once its upload is complete
    return
  tmp = p.parent / f"{p.name}.tmp"
  tmp.write_bytes(data)
  tmp.replace(p)


class Appender:
  """A file grown by appending (``metrics.jsonl``, TensorBoard events), kept across restarts.

  Locally a plain append handle, flushed on :meth:`flush`. In a bucket the whole contents
  (those found at start, then everything written) are uploaded on :meth:`flush` when at least
  ``min_interval_s`` passed since the last upload, and on :meth:`close`: a process killed
  between uploads loses what it wrote since the last one.
  """

  def __init__(self, p, min_interval_s: float = 0.0):
    self.path = path(p)
    self.min_interval_s = min_interval_s
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._local = None if is_bucket(self.path) else self.path.open("ab")
    self._data = bytearray()
    if self._local is None and self.path.exists():
      self._data += self.path.read_bytes()
    self._uploaded = None   # time.monotonic() of the last upload
    self._dirty = False
    self.closed = False

  def write(self, data: bytes | str) -> None:
    data = data.encode() if isinstance(data, str) else data
    if self._local is not None:
      self._local.write(data)
    else:
      self._data += data
      self._dirty = True

  def flush(self, force: bool = False) -> None:
    if self._local is not None:
      self._local.flush()
    elif self._dirty and (force or self._uploaded is None
                          or time.monotonic() - self._uploaded >= self.min_interval_s):
      self.path.write_bytes(bytes(self._data))
      self._uploaded, self._dirty = time.monotonic(), False

  def close(self) -> None:
    if self.closed:
      return
    self.flush(force=True)
    if self._local is not None:
      self._local.close()
    self.closed = True

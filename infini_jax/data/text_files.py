"""Local text files as documents, in plain Python (no TensorFlow): listing, reading, splitting.

A `.txt` or `.txt.gz` file is one document; a `.jsonl` file holds one document per line, the
text under `text_key`. Errors name the file and say how to fix it.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
from typing import Iterator, Sequence

from infini_jax.errors import UserError

SUFFIXES = (".txt", ".txt.gz", ".jsonl")


def list_files(pattern: str, setting: str = "corpus_pattern", suffixes: Sequence[str] = SUFFIXES,
               min_bytes: int = 0, exclude_dirs: Sequence[str] = ()) -> list[str]:
  """Sorted absolute paths of the text files in a folder (recursively) or matching a glob.

  ``setting``: what the user set the pattern with, for the error messages. ``suffixes``: the
  file endings read (each file one document but for ``.jsonl``); ``min_bytes``: smaller files are
  left out; ``exclude_dirs``: folders of these names are not entered (in a folder walk).
  """
  path = os.path.expanduser(pattern)
  if os.path.isdir(path):
    found = []
    for d, subdirs, fs in os.walk(path):
      subdirs[:] = sorted(s for s in subdirs if s not in exclude_dirs)
      found += [os.path.join(d, f) for f in fs]
  else:
    found = glob.glob(path, recursive=True)
  files = sorted(os.path.abspath(f) for f in found
                 if f.endswith(tuple(suffixes)) and os.path.isfile(f)
                 and os.path.getsize(f) >= min_bytes)
  if not glob.has_magic(path) and not os.path.exists(path):
    raise UserError(f"corpus folder {pattern!r} does not exist; set {setting} to a folder or a "
                    "glob (e.g. '/data/books/*.txt') of .txt, .jsonl or .txt.gz files")
  if not files:
    kinds = ".txt, .jsonl or .txt.gz" if tuple(suffixes) == SUFFIXES else " or ".join(suffixes)
    size = f" of {min_bytes} bytes or more" if min_bytes else ""
    raise UserError(
        f"no {kinds} files{size} found at {pattern!r}; set {setting} to a folder or a glob (e.g. "
        "'/data/books/*.txt') of such files")
  return files


def _root(files: Sequence[str]) -> str:
  return os.path.commonpath([os.path.dirname(f) for f in files])


def _decode(path: str, data: bytes) -> str:
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise UserError(
        f"{path} is not UTF-8 text (invalid byte at offset {e.start}); convert it to UTF-8 "
        f"(e.g. `iconv -f latin1 -t utf-8 IN > OUT`) or leave it out") from None


def read_text(path: str, what: str) -> str:
  """The UTF-8 text of a file the user named (``what``: the flag or setting that named it)."""
  try:
    with open(os.path.expanduser(path), "rb") as f:
      data = f.read()
  except OSError as e:
    raise UserError(f"{what}={path}: cannot read it ({e.strerror}); check the path") from None
  return _decode(path, data)


def read_documents(path: str, root: str, text_key: str = "text") -> Iterator[tuple[str, str]]:
  """Yields (document id, text) for the non-empty documents of one file."""
  rel = os.path.relpath(path, root)
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if not path.endswith(".jsonl"):
    text = _decode(path, data)
    if text.strip():
      yield rel, text
    return
  for lineno, line in enumerate(data.split(b"\n"), start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(_decode(f"{path}:{lineno}", line))
    except json.JSONDecodeError as e:
      raise UserError(f"{path}:{lineno} is not valid JSON ({e.msg}); write one JSON object "
                      "per line") from None
    if not isinstance(record, dict) or not isinstance(record.get(text_key), str):
      raise UserError(f"{path}:{lineno} has no string field {text_key!r}; write "
                      f'{{"{text_key}": "..."}} per line or set text_key')
    if record[text_key].strip():
      yield f"{rel}:{lineno}", record[text_key]


def iter_documents(files: Sequence[str], text_key: str = "text") -> Iterator[tuple[str, str]]:
  root = _root(files)
  for path in files:
    yield from read_documents(path, root, text_key)


def validation_ids(doc_ids: Sequence[str], validation_files: Sequence[str] = (),
                   validation_fraction: float = 0.05) -> set[str]:
  """The documents of the validation split.

  With `validation_files`, every document of those files (named by base name or path relative to
  the corpus root); otherwise a fixed pseudo-random `validation_fraction` of the documents (at
  least one), chosen by a hash of their ids so the choice never depends on file order.
  """
  if len(doc_ids) < 2:
    raise UserError(f"the corpus has {len(doc_ids)} non-empty document(s); a train and a "
                    "validation split need at least 2: add documents")
  if validation_files:
    wanted = set(validation_files)
    picked = {d for d in doc_ids
              if d.split(":")[0] in wanted or os.path.basename(d.split(":")[0]) in wanted}
    seen = {d.split(":")[0] for d in picked} | {os.path.basename(d.split(":")[0]) for d in picked}
    if wanted - seen:
      raise UserError(f"validation files {sorted(wanted - seen)} are not in the corpus; "
                      "fix the names in validation_files")
    if len(picked) == len(doc_ids):
      raise UserError("validation_files cover the whole corpus; leave some files for train")
    return picked
  by_hash = sorted(doc_ids, key=lambda d: hashlib.sha1(d.encode()).hexdigest())
  n = min(len(doc_ids) - 1, max(1, round(validation_fraction * len(doc_ids))))
  return set(by_hash[:n])


def fingerprint(files: Sequence[str], *settings) -> str:
  """A short hash of the files (path, size, mtime) and settings: a changed corpus is rebuilt."""
  h = hashlib.sha1(repr(settings).encode())
  for f in files:
    st = os.stat(f)
    h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return h.hexdigest()[:12]

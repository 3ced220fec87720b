"""A seqio Vocabulary over a Hugging Face ``tokenizer.json`` (e.g. Llama 3's byte-level BPE).

Encoding and decoding are the ``tokenizers`` library's own, so ids equal what it gives; inside
tf.data they run through ``tf.numpy_function`` (in the input pipeline's Python threads).
Llama 2 and Mistral ship a SentencePiece ``tokenizer.model``: use ``seqio.SentencePieceVocabulary``
for those.

seqio pads with id 0 and masks the loss there. In Llama 3's vocabulary id 0 is the token "!",
so the pipeline treats it as padding (its loss is not counted); the ids themselves are unchanged.
"""

import json
import os

import numpy as np
import seqio
import tensorflow as tf

# Looked for, in this order, when neither an argument nor tokenizer_config.json names the EOS.
_EOS_CANDIDATES = ("<|end_of_text|>", "</s>", "<|endoftext|>", "<eos>")


def _token_content(token):
  """tokenizer_config.json writes special tokens as strings or as {"content": ...} dicts."""
  return token.get("content") if isinstance(token, dict) else token


class HfTokenizerVocabulary(seqio.Vocabulary):
  """``tokenizer.json`` as a :class:`seqio.Vocabulary`.

  Args:
    path: the ``tokenizer.json`` file, or the directory holding it.
    eos_token / bos_token: special token strings; None reads them from ``tokenizer_config.json``
      beside the file (EOS falls back to a known name such as ``<|end_of_text|>`` or ``</s>``).
    add_special_tokens: let the tokenizer's post-processor add its tokens (Llama 3: BOS) when
      encoding. seqio's convention, the default, is to add nothing (EOS is appended by the task).
    extra_ids: seqio's extra sentinel ids, appended after the vocabulary.
  """

  def __init__(self, path: str, eos_token: str | None = None, bos_token: str | None = None,
               add_special_tokens: bool = False, extra_ids: int = 0):
    from tokenizers import Tokenizer
    path = os.path.expanduser(os.fspath(path))
    if os.path.isdir(path):
      path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
      raise ValueError(f"tokenizer file {path!r} not found; point at a Hugging Face tokenizer.json")
    self._path = path
    self._tokenizer = Tokenizer.from_file(path)
    self._add_special_tokens = add_special_tokens
    config = {}
    config_path = os.path.join(os.path.dirname(path), "tokenizer_config.json")
    if os.path.isfile(config_path):
      with open(config_path) as f:
        config = json.load(f)
    eos_token = eos_token or _token_content(config.get("eos_token"))
    if eos_token is None:
      eos_token = next((t for t in _EOS_CANDIDATES if self._tokenizer.token_to_id(t) is not None),
                       None)
    self._eos_id = self._id(eos_token, "eos_token")
    self._bos_id = self._id(bos_token or _token_content(config.get("bos_token")), "bos_token")
    with open(path) as f:
      unk = json.load(f).get("model", {}).get("unk_token")
    self._unk_id = self._id(unk, "unk_token")
    super().__init__(extra_ids=extra_ids)

  def _id(self, token: str | None, what: str) -> int | None:
    if token is None:
      return None
    i = self._tokenizer.token_to_id(token)
    if i is None:
      raise ValueError(f"{what} {token!r} is not in the vocabulary of {self._path}")
    return i

  @property
  def tokenizer(self):
    """The ``tokenizers.Tokenizer``."""
    return self._tokenizer

  @property
  def eos_id(self) -> int | None:
    return self._eos_id

  @property
  def bos_id(self) -> int | None:
    return self._bos_id

  @property
  def unk_id(self) -> int | None:
    return self._unk_id

  @property
  def _base_vocab_size(self) -> int:
    return self._tokenizer.get_vocab_size(with_added_tokens=True)

  def _encode(self, s) -> list:
    if isinstance(s, np.ndarray):   # a 0-d array from tf.numpy_function in eager mode
      s = s.item()
    if isinstance(s, bytes):
      s = s.decode("utf-8")
    return self._tokenizer.encode(s, add_special_tokens=self._add_special_tokens).ids

  def _decode(self, ids) -> str:
    return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

  def _encode_tf(self, s: tf.Tensor):
    """A scalar string -> int32 ``[n]``; a vector of strings -> a ragged ``[batch, None]``."""
    s = tf.convert_to_tensor(s, tf.string)
    if s.shape.rank == 0:
      ids = tf.numpy_function(lambda b: np.asarray(self._encode(b), np.int32), [s],
                              tf.int32, stateful=False)
      ids.set_shape([None])
      return ids
    if s.shape.rank != 1:
      raise ValueError(f"encode_tf takes a scalar or a vector of strings, got shape {s.shape}")

    def encode_batch(strings):
      encodings = self._tokenizer.encode_batch([b.decode("utf-8") for b in strings],
                                               add_special_tokens=self._add_special_tokens)
      lengths = np.asarray([len(e.ids) for e in encodings], np.int64)
      values = np.asarray([i for e in encodings for i in e.ids], np.int32)
      return values, lengths

    values, lengths = tf.numpy_function(encode_batch, [s], (tf.int32, tf.int64), stateful=False)
    values.set_shape([None])
    lengths.set_shape([None])
    return tf.RaggedTensor.from_row_lengths(values, lengths)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """int ``[n]`` -> scalar string; ``[batch, n]`` -> ``[batch]`` strings (each cut at EOS)."""
    ids = tf.convert_to_tensor(ids)
    rank = ids.shape.rank

    def text(row):
      row = [int(i) for i in row]
      if self.eos_id in row:   # seqio pads after the EOS with 0, a real token here: drop it
        row = row[:row.index(self.eos_id)]
      return self._decode(row).encode("utf-8")

    def decode(a):
      if a.ndim == 1:
        return np.array(text(a), dtype=object)
      return np.array([text(r) for r in a], dtype=object)

    out = tf.numpy_function(decode, [ids], tf.string, stateful=False)
    out.set_shape([] if rank == 1 else ids.shape[:1])
    return out

  def __eq__(self, other):
    return (isinstance(other, HfTokenizerVocabulary) and self._path == other._path
            and (self.eos_id, self.bos_id, self._add_special_tokens, self.extra_ids)
            == (other.eos_id, other.bos_id, other._add_special_tokens, other.extra_ids))

  def __hash__(self):
    return hash((self._path, self.eos_id, self._add_special_tokens, self.extra_ids))

  def __str__(self):
    return (f"HfTokenizerVocabulary(file={self._path}, vocab_size={self.vocab_size}, "
            f"eos_id={self.eos_id}, bos_id={self.bos_id})")

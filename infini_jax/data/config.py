"""The data configuration: plain data, checked on construction, importable without TensorFlow."""

from __future__ import annotations

import dataclasses
from typing import Optional

from infini_jax.errors import UserError


def check_batch_shape(batch_size: int, seq_len: int, segment_len: int) -> None:
  """Raises unless batches of ``batch_size`` x ``seq_len`` tokens split into whole segments."""
  if segment_len <= 0 or seq_len <= 0:
    raise UserError(f"seq_len {seq_len} and segment_len {segment_len} must be positive")
  if seq_len % segment_len:
    up = -(-seq_len // segment_len) * segment_len
    raise UserError(f"seq_len {seq_len} is not a multiple of segment_len {segment_len}; set "
                    f"seq_len to a multiple of {segment_len} (e.g. {up})")
  if batch_size <= 0:
    raise UserError(f"batch_size {batch_size} must be positive")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What the trainer and the evaluations read.

  task: a seqio task or mixture name. Built in: "shakespeare" (bundled), "pystdlib" (the Python
    standard library's source files of 16 KB or more, see data/corpus.py), "local" (needs
    corpus_pattern), "pg19", "c4", "passkey", and "<corpus>_passkey" mixtures such as
    "shakespeare_passkey"; corpora added with `data.register_corpus` work the same way; any
    other name must already be in seqio's registries with "inputs", "targets" and "loss_mask"
    (and optionally "memory_weight").
  seq_len: tokens per example (= segments * segment_len).
  segment_len: tokens per segment; seq_len must be a multiple of it.
  batch_size: the GLOBAL batch size, divided evenly over processes.
  vocabulary: "byte" or "sentencepiece:/path/model.model" (see vocab.py for adding kinds).
  pack: False: a document never continues into another example (each example starts an empty
    memory at a document start); True: documents are concatenated, separated by EOS.
  min_doc_tokens: drop documents with fewer tokens (the paper keeps documents longer than 4K).
  corpus_pattern: folder or glob of .txt / .jsonl / .txt.gz files, for task="local".
  data_dir: tensorflow-datasets data folder (None: TFDS's default, ~/tensorflow_datasets).
  passkey_rate: fraction of passkey examples in a "<corpus>_passkey" mixture, in (0, 1).
  passkey_segments: inclusive range of the lengths, in segments, of training passkey examples.
  passkey_digits: digits of the pass keys of training examples.
  passkey_filler: a text file whose text replaces the paper's filler sentences.
  passkey_natural_filler_rate: in [0, 1]: the fraction of training passkey prompts whose haystack
    is a passage of natural text, drawn at random from the Shakespeare works of the train split
    (data/fillers.py: training_text; never the validation plays nor the evaluation fillers), in
    place of the tiled filler (the paper's, or passkey_filler's). 0: off. Evaluation is unchanged.
  passkey_vary_wording: training passkey prompts draw their key sentence and question from a few
    paraphrases of the paper's (passkey.KEY_SENTENCES, QUESTIONS); the answer stays " <key>".
    Evaluation keeps the paper's wording.
  passkey_loss_weight: the loss weight of each answer token of a passkey example, relative to a
    text token's 1. A passkey example has a few answer tokens against a text example's seq_len
    targets, so in a mixture its share of the gradient is about (digits + 1) / seq_len; a weight near
    seq_len / (digits + 1) gives both kinds of example an equal share.
  passkey_dilution: >= 1. In training, every token of a passkey example except the key sentence
    is written into the memory r times over, r log-uniform in [1, passkey_dilution] per example
    (passkey.training_example): a memory as full as that of an up to passkey_dilution times longer
    prompt. 1: off. Evaluation never dilutes.
  seed, shuffle: shuffling of the train split, a new order each epoch (validation is never
    shuffled).
  records_dir: where the tasks' prepared examples are (ArrayRecord; scripts/prepare_data.py
    writes them, a run prepares a missing split itself). None: <data_dir>/infini_jax_records.
  read_threads: threads that read and batch examples in each training process.
  read_workers: 0: read in the training process; N: in N worker processes per host (grain's
    mp_prefetch), for hosts that need more than one core to keep up.
  """

  task: str = "shakespeare"
  seq_len: int = 2048
  segment_len: int = 256
  batch_size: int = 8
  vocabulary: str = "byte"
  pack: bool = False
  min_doc_tokens: int = 0
  corpus_pattern: Optional[str] = None
  data_dir: Optional[str] = None
  passkey_rate: float = 0.0
  passkey_segments: tuple[int, int] = (4, 8)
  passkey_digits: int = 5
  passkey_filler: Optional[str] = None
  passkey_loss_weight: float = 1.0
  passkey_dilution: float = 1.0
  passkey_natural_filler_rate: float = 0.0
  passkey_vary_wording: bool = False
  seed: int = 0
  shuffle: bool = True
  records_dir: Optional[str] = None
  read_threads: int = 2
  read_workers: int = 0

  def __post_init__(self):
    check_batch_shape(self.batch_size, self.seq_len, self.segment_len)
    if self.min_doc_tokens < 0:
      raise UserError(f"min_doc_tokens {self.min_doc_tokens} must be >= 0")
    if not 0.0 <= self.passkey_rate < 1.0:
      raise UserError(f"passkey_rate {self.passkey_rate} must be in [0, 1)")
    # gin hands lists over; keep the config hashable.
    object.__setattr__(self, "passkey_segments", tuple(int(s) for s in self.passkey_segments))
    if len(self.passkey_segments) != 2:
      raise UserError(f"passkey_segments {self.passkey_segments} must be (min, max) segments")
    if self.passkey_loss_weight <= 0:
      raise UserError(f"passkey_loss_weight {self.passkey_loss_weight} must be positive")
    if not self.passkey_dilution >= 1.0:
      raise UserError(f"passkey_dilution {self.passkey_dilution} must be >= 1 (1: off)")
    if not 0.0 <= self.passkey_natural_filler_rate <= 1.0:
      raise UserError(f"DataConfig.passkey_natural_filler_rate="
                      f"{self.passkey_natural_filler_rate!r} must be a fraction in [0, 1] (0: the "
                      "tiled filler only)")
    if not isinstance(self.passkey_vary_wording, bool):
      raise UserError(f"DataConfig.passkey_vary_wording={self.passkey_vary_wording!r} must be True "
                      "or False")
    if self.read_threads < 1 or self.read_workers < 0:
      raise UserError(f"read_threads {self.read_threads} must be >= 1 and read_workers "
                      f"{self.read_workers} >= 0")
    if self.passkey_digits < 1:
      raise UserError(f"passkey_digits {self.passkey_digits} must be >= 1")

  @property
  def segments(self) -> int:
    return self.seq_len // self.segment_len

  def check_passkey_fits(self):
    """Raises unless training passkey examples fit in seq_len (checked when a task uses them)."""
    lo, hi = self.passkey_segments
    if not 1 <= lo <= hi:
      raise UserError(
          f"passkey_segments {self.passkey_segments} must be (min, max) with 1 <= min <= max")
    if hi > self.segments:
      raise UserError(
          f"passkey examples of up to {hi} segments ({hi * self.segment_len} tokens) do not fit "
          f"seq_len {self.seq_len}; set passkey_segments=({min(lo, self.segments)}, "
          f"{self.segments}) or raise seq_len to {hi * self.segment_len}")

"""Prepared examples on disk: one split of a task as ArrayRecord shards, read back by index.

A prepared split is a folder with ``info.json`` and ``examples-SSSSS-of-NNNNN.array_record``. Each
record is one example of ``seq_len`` tokens: every feature's values in the order ``info.json``
lists them, raw little-endian, nothing else (a byte-vocabulary example of 512 tokens with the four
features is 8 KiB). The shards are read in their order as one sequence: record i of the split is
example i, reached in constant time whatever i is. Plain numpy and array_record: no TensorFlow.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from infini_jax.errors import UserError

FORMAT = "infini_jax.records/1"
INFO = "info.json"
# One record per chunk: reading example i touches only its own bytes.
_WRITER_OPTIONS = "group_size:1"


def shard_name(index: int, count: int) -> str:
  return f"examples-{index:05d}-of-{count:05d}.array_record"


class Decoder:
  """record bytes -> {feature: array [seq_len]} for the layout ``features`` = [(name, dtype)]."""

  def __init__(self, features: Sequence[tuple[str, str]], seq_len: int):
    self.features = [(name, np.dtype(dtype).newbyteorder("<")) for name, dtype in features]
    self.seq_len = seq_len
    self.nbytes = sum(dtype.itemsize for _, dtype in self.features) * seq_len

  def encode(self, example: dict) -> bytes:
    parts = []
    for name, dtype in self.features:
      value = np.asarray(example[name])
      if value.shape != (self.seq_len,):
        raise ValueError(f"feature {name!r} has shape {value.shape}, expected ({self.seq_len},)")
      parts.append(value.astype(dtype).tobytes())
    return b"".join(parts)

  def __call__(self, record: bytes) -> dict:
    if len(record) != self.nbytes:
      raise ValueError(f"a record of {len(record)} bytes, expected {self.nbytes}: the prepared "
                       "files do not match their info.json; prepare the data again")
    out, offset = {}, 0
    for name, dtype in self.features:
      out[name] = np.frombuffer(record, dtype, self.seq_len, offset).astype(dtype.newbyteorder("="))
      offset += dtype.itemsize * self.seq_len
    return out


def write_shard(path: str, examples: Iterable[dict], decoder: Decoder) -> int:
  """Writes ``examples`` (dicts of [seq_len] arrays) to one shard; returns how many."""
  writer = ArrayRecordWriter(path, _WRITER_OPTIONS)
  count = 0
  try:
    for example in examples:
      writer.write(decoder.encode(example))
      count += 1
  finally:
    writer.close()
  return count


def write_info(folder: str, decoder: Decoder, counts: Sequence[int], source: dict) -> dict:
  """``info.json`` of a split whose shards hold ``counts`` examples; written last, so a folder
  with it is complete."""
  info = {"format": FORMAT, "seq_len": decoder.seq_len,
          "features": [[name, dtype.str] for name, dtype in decoder.features],
          "shards": [shard_name(i, len(counts)) for i in range(len(counts))],
          "counts": list(counts), "examples": int(sum(counts)), "source": source}
  with open(os.path.join(folder, INFO), "w") as f:
    json.dump(info, f, indent=1)
  return info


def read_info(folder: str) -> dict | None:
  """The split's info, or None if it is not prepared (no complete ``info.json``)."""
  try:
    with open(os.path.join(folder, INFO)) as f:
      info = json.load(f)
  except FileNotFoundError:
    return None
  if info.get("format") != FORMAT:
    raise UserError(f"{folder} holds examples in format {info.get('format')!r}, not {FORMAT}; "
                    "delete the folder and prepare the data again (scripts/prepare_data.py)")
  return info


def open_split(folder: str, seq_len: int) -> grain.MapDataset:
  """The prepared split at ``folder`` as a random-access dataset of example dicts."""
  info = read_info(folder)
  if info is None:
    raise UserError(f"no prepared examples at {folder}; run scripts/prepare_data.py with the "
                    "run's gin flags")
  if info["seq_len"] != seq_len:
    raise UserError(f"{folder} holds examples of {info['seq_len']} tokens, the run asks for "
                    f"{seq_len}; prepare the data for this seq_len")
  if not info["examples"]:
    raise UserError(f"{folder} holds no examples: every document was dropped (min_doc_tokens?) "
                    "or the split is empty; check the corpus and DataConfig.min_doc_tokens")
  paths = [os.path.join(folder, name) for name, n in zip(info["shards"], info["counts"]) if n]
  source = grain.sources.ArrayRecordDataSource(paths)
  return grain.MapDataset.source(source).map(Decoder(info["features"], seq_len))

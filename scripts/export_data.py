"""Writes a run's batches to .npz files, for training and evaluating where TensorFlow is missing.

    python scripts/export_data.py --gin_file=configs/long_context/pystdlib/none.gin \\
        --out=exports/pystdlib --train_batches=1000 --seq_lens=2048,4096

Reads the run's DataConfig (``train.data``) from the same gin flags as ``python -m
infini_jax.train`` and writes, through the seqio pipeline, into ``--out``:
- ``train-<seq_len>.npz``: the first ``--train_batches`` global batches of the train split, in the
  order the run would read them;
- ``validation-<L>.npz`` for each L of ``--seq_lens`` (default the run's seq_len): the whole
  held-out split cut into examples of L tokens, as ``eval_ppl`` reads it (the corpus alone, in
  order; L a multiple of the segment length);
- ``info.json``: the DataConfig's fields, with ``train_batches``.

A machine without TensorFlow or seqio (e.g. the GPU image) then trains and evaluates on exactly
those batches with ``--gin.train.data=@ExportedData()`` and ``--gin.ExportedData.directory='DIR'``
(``ExportedData.seq_len``, ``segment_len`` and ``batch_size`` bound as ``DataConfig``'s are).
Tokens are stored as uint16 when the vocabulary fits, masks as float32, compressed.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from infini_jax import paths  # noqa: E402
from infini_jax.commands import entry, gin_flags  # noqa: E402
from infini_jax.errors import UserError  # noqa: E402
from infini_jax.inputs import FIELDS  # noqa: E402


def read_batches(pipeline, limit: int | None) -> dict:
  """The next ``limit`` global batches of ``pipeline`` (None: until it ends), stacked
  ``{field: [examples, seq_len]}``."""
  batches = []
  while limit is None or len(batches) < limit:
    try:
      batches.append(pipeline.next_local())
    except StopIteration:
      break
  if not batches:
    raise UserError("the split is empty: nothing to export")
  return {k: np.concatenate([b[k] for b in batches]) for k in FIELDS}


def write(path: str, arrays: dict, vocab_size: int) -> None:
  """Writes ``arrays`` to ``path`` whole or not at all (``paths.write_bytes``)."""
  tokens = np.uint16 if vocab_size <= 2**16 else np.int32
  stored = {k: v.astype(tokens if k in ("inputs", "targets") else np.float32)
            for k, v in arrays.items()}
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **stored)
  paths.write_bytes(path, buffer.getvalue())


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  files, search_paths, bindings, rest = gin_flags.split_flags(argv)
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="the folder to write")
  p.add_argument("--train_batches", type=int, default=0, help="global batches of train (0: none)")
  p.add_argument("--seq_lens", default="", help="comma-separated held-out example lengths")
  args = p.parse_args(rest)
  if not files:
    raise UserError("no --gin_file given; pass the run's flags, e.g. --gin_file=configs/tiny.gin")
  if args.train_batches < 0:
    raise UserError(f"--train_batches {args.train_batches} must be >= 0")
  gin_flags.setup_logging()
  gin_flags.parse(files, search_paths, bindings)
  run = gin_flags.run_config()
  from infini_jax.data import DataConfig, build_pipeline
  from infini_jax.evals import ppl
  cfg = run.data
  if not isinstance(cfg, DataConfig):
    raise UserError(f"train.data is {type(cfg).__name__}, not a DataConfig: nothing to export")
  seq_lens = [int(s) for s in args.seq_lens.split(",") if s] or [cfg.seq_len]
  for length in seq_lens:
    if length % cfg.segment_len:
      raise UserError(f"--seq_lens: {length} is not a multiple of segment_len {cfg.segment_len}")
  vocab_size = run.model.vocab_size
  written = []
  if args.train_batches:
    write(os.path.join(args.out, f"train-{cfg.seq_len}.npz"),
          read_batches(build_pipeline(cfg, "train"), args.train_batches), vocab_size)
    written.append(f"train-{cfg.seq_len}.npz")
  for length in seq_lens:
    held_out = ppl.held_out_data(cfg, length // cfg.segment_len, None)
    write(os.path.join(args.out, f"validation-{length}.npz"),
          read_batches(build_pipeline(held_out, "validation"), None), vocab_size)
    written.append(f"validation-{length}.npz")
  info = dict(dataclasses.asdict(cfg), train_batches=args.train_batches)
  paths.write_text(os.path.join(args.out, "info.json"), json.dumps(info, indent=1))
  print(json.dumps({"out": args.out, "files": written}))


if __name__ == "__main__":
  entry.run(main)

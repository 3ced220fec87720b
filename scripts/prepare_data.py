"""Writes a run's data (its seqio task's examples) to ArrayRecord shards, ahead of training.

    python scripts/prepare_data.py --gin_file=configs/tiny.gin [--gin.NAME=VALUE ...] \
        [--workers 8] [--shards 64] [--splits train,validation] [--overwrite]

Reads the run's DataConfig (``train.data``) from the same gin flags as ``python -m
infini_jax.train`` and prepares every task of its task or mixture that is read from documents
(passkey examples are made from their seeds as they are read). The examples go to
``DataConfig.records_dir`` (default ``<data_dir>/infini_jax_records``); a run whose examples are
not prepared prepares them itself, in one process. The tokenizer runs here, in ``--workers``
processes over ``--shards`` even parts of the documents: the shard count is part of the data
(the order of the examples), so keep it when preparing again. Validation splits are written as
one shard.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from infini_jax.commands import entry, gin_flags  # noqa: E402
from infini_jax.errors import UserError  # noqa: E402


def main(argv=None):
  files, paths, bindings, rest = gin_flags.split_flags(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workers", type=int, default=1, help="processes that run the seqio task")
  p.add_argument("--shards", type=int, default=0, help="parts of the documents (0: --workers)")
  p.add_argument("--splits", default="train,validation")
  p.add_argument("--overwrite", action="store_true", help="prepare again even if present")
  args = p.parse_args(rest)
  if not files:
    raise UserError("no --gin_file given; pass the run's flags, e.g. --gin_file=configs/tiny.gin")
  if args.workers < 1 or args.shards < 0:
    raise UserError(f"--workers {args.workers} must be >= 1 and --shards {args.shards} >= 0")
  gin_flags.setup_logging()
  gin_flags.parse(files, paths, bindings)
  cfg = gin_flags.run_config().data   # the checked RunConfig, as every entry point reads it
  from infini_jax.data import DataConfig, examples, prepare, tasks
  if not isinstance(cfg, DataConfig):
    raise UserError(f"train.data is {type(cfg).__name__}, not a DataConfig: nothing to prepare")
  for task, _ in examples.components(tasks.task_name(cfg)):
    if isinstance(task.source, tasks.PasskeySource):
      continue
    for split in args.splits.split(","):
      # Validation is small and may have fewer documents than shards: one shard.
      shards = (args.shards or args.workers) if split == "train" else 1
      info = prepare.prepare(cfg, task.name, split, shards=shards, workers=args.workers,
                             overwrite=args.overwrite)
      print(json.dumps({"task": task.name, "split": split, "examples": info["examples"],
                        "seconds": round(info.get("seconds", 0.0), 2),
                        "folder": prepare.split_dir(cfg, task.name, split)}))


if __name__ == "__main__":
  entry.run(main)

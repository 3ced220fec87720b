"""Throughput and resume time of the input pipeline on the bundled Shakespeare corpus.

    python scripts/bench_data.py [--json PATH] [--cache DIR] [--seq_len 512] [--batch 8]

For the byte vocabulary and a byte-level BPE of --vocab_size (trained here on the corpus's train
works with `tokenizers`, cached under --cache):
- prepare: the seqio task (read, tokenize, cut into examples) written to ArrayRecord by
  scripts/prepare_data.py's code with 1 and 2 worker processes: tokens/s of the whole job (wall,
  with process start-up) and of the workers' own loops (steady).
- read: tokens/s of the training pipeline (records -> batches [batch, seq_len]) with 1 and 2
  reader threads and with 1 and 2 worker processes.
- resume: seconds from building the pipeline at a position (global batches consumed) to holding
  its first batch, at 0, 10K, 100K and 1M; the median and least of --repeats.
And the design not taken: a tf.data iterator checkpoint of the shuffled seqio pipeline (T5X's),
its size per host and its save and restore time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from infini_jax.commands import entry  # noqa: E402


def bpe_tokenizer(folder: str, vocab_size: int) -> tuple[str, int]:
  """A byte-level BPE trained on the corpus's train works (cached); (tokenizer.json, its size)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from infini_jax.data import corpus, text_files
  path = os.path.join(folder, f"bpe{vocab_size}", "tokenizer.json")
  if not os.path.isfile(path):
    files = [f for f in text_files.list_files(corpus.shakespeare_pattern())
             if os.path.basename(f) not in corpus.SHAKESPEARE_VALIDATION]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train(files, trainer)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tok.save(path)
  from tokenizers import Tokenizer
  return path, Tokenizer.from_file(path).get_vocab_size()


def prepare_rate(cfg, workers: int) -> dict:
  from infini_jax.data import prepare, tasks
  task = tasks.task_name(cfg)
  start = time.perf_counter()
  info = prepare.prepare(cfg, task, "train", shards=workers, workers=workers, overwrite=True)
  wall = time.perf_counter() - start
  tokens = info["examples"] * cfg.seq_len
  return {"workers": workers, "examples": info["examples"], "tokens": tokens,
          "wall_s": wall, "tokens_per_s_wall": tokens / wall,
          "tokens_per_s_steady": tokens / max(info["shard_seconds"])}


def read_rate(cfg, batches: int) -> dict:
  from infini_jax import data
  pipe = data.build_pipeline(cfg)
  pipe.next_local()   # the readers have started
  start = time.perf_counter()
  for _ in range(batches):
    pipe.next_local()
  seconds = time.perf_counter() - start
  pipe.close()
  tokens = batches * cfg.batch_size * cfg.seq_len
  return {"read_threads": cfg.read_threads, "read_workers": cfg.read_workers,
          "tokens_per_s": tokens / seconds, "batches": batches}


def first_batch_seconds(cfg, position: int, repeats: int) -> dict:
  from infini_jax import data
  from infini_jax.data import state
  saved = state.make(position, cfg.batch_size)   # what a checkpoint holds
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    pipe = data.build_pipeline(cfg, start_position=saved)
    pipe.next_local()
    times.append(time.perf_counter() - start)
    pipe.close()
  return {"median": statistics.median(times), "min": min(times)}


def tfdata_checkpoint(cfg, batches: int) -> dict:
  """The other design (T5X's): the shuffled seqio tf.data pipeline of one host, its iterator
  saved with tf.train.Checkpoint after ``batches`` batches; bytes on disk, save and restore
  seconds (restore: to the first batch)."""
  import tempfile
  import seqio
  import tensorflow as tf
  from infini_jax.data import tasks
  task = tasks.task_name(cfg)
  features = seqio.get_mixture_or_task(task).output_features
  ds = seqio.get_dataset(
      mixture_or_task_name=task, task_feature_lengths={k: cfg.seq_len for k in features},
      feature_converter=seqio.PassThroughFeatureConverter(), dataset_split="train", shuffle=True,
      num_epochs=None, seed=0, use_cached=False, verbose=False)
  ds = ds.batch(cfg.batch_size, drop_remainder=True).prefetch(2)
  iterator = iter(ds)
  for _ in range(batches):
    next(iterator)
  with tempfile.TemporaryDirectory() as folder:
    start = time.perf_counter()
    path = tf.train.Checkpoint(iterator=iterator).write(os.path.join(folder, "iterator"))
    save = time.perf_counter() - start
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    start = time.perf_counter()
    restored = iter(ds)
    tf.train.Checkpoint(iterator=restored).read(path).assert_consumed()
    next(restored)
    restore = time.perf_counter() - start
  return {"batches": batches, "state_bytes_per_host": size, "save_s": save, "restore_s": restore}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--json")
  p.add_argument("--cache", default=os.path.expanduser("~/.cache/infini_jax/bench_data"))
  p.add_argument("--seq_len", type=int, default=512)
  p.add_argument("--segment_len", type=int, default=128)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--vocab_size", type=int, default=128_000)
  p.add_argument("--read_batches", type=int, default=300)
  p.add_argument("--positions", default="0,10000,100000,1000000")
  p.add_argument("--repeats", type=int, default=9)
  p.add_argument("--skip_prepare", action="store_true", help="reuse prepared records (no rates)")
  p.add_argument("--tfdata_batches", type=int, default=1000,
                 help="position of the tf.data iterator checkpoint compared (0: skip it)")
  args = p.parse_args(argv)
  import dataclasses
  from infini_jax.data import DataConfig
  tokenizer, actual = bpe_tokenizer(args.cache, args.vocab_size)
  vocabs = {"byte": "byte", f"bpe{args.vocab_size}": f"hf:{tokenizer}"}
  out = {"seq_len": args.seq_len, "batch": args.batch, "bpe_vocab_size": actual,
         "cpus": os.cpu_count(), "load_average": os.getloadavg(), "vocabularies": {}}
  print(f"BPE vocabulary: asked {args.vocab_size}, trained {actual} (corpus of ~5 MB)")
  for name, vocabulary in vocabs.items():
    result = out["vocabularies"][name] = {"prepare": [], "read": []}
    base = DataConfig(task="shakespeare", seq_len=args.seq_len, segment_len=args.segment_len,
                      batch_size=args.batch, vocabulary=vocabulary,
                      data_dir=os.path.join(args.cache, "tfds"),
                      records_dir=os.path.join(args.cache, "records", name))
    if not args.skip_prepare:
      for workers in (1, 2):
        r = prepare_rate(base, workers)
        result["prepare"].append(r)
        print(f"{name:>10} prepare  workers={workers}: {r['examples']} examples, "
              f"{r['tokens_per_s_wall']:,.0f} tok/s wall, {r['tokens_per_s_steady']:,.0f} steady")
    for threads, workers in ((1, 0), (2, 0), (1, 1), (1, 2)):
      cfg = dataclasses.replace(base, read_threads=threads, read_workers=workers)
      r = read_rate(cfg, args.read_batches)
      result["read"].append(r)
      print(f"{name:>10} read     threads={threads} workers={workers}: "
            f"{r['tokens_per_s']:,.0f} tok/s")
    first_batch_seconds(base, 0, 1)   # imports, task registration: not part of a resume
    result["first_batch_s"] = {}
    for position in map(int, args.positions.split(",")):
      s = result["first_batch_s"][position] = first_batch_seconds(base, position, args.repeats)
      print(f"{name:>10} first batch at position {position:>9,}: median {s['median']:.4f} s, "
            f"min {s['min']:.4f} s")
  if args.tfdata_batches:
    byte = DataConfig(task="shakespeare", seq_len=args.seq_len, segment_len=args.segment_len,
                      batch_size=args.batch, data_dir=os.path.join(args.cache, "tfds"))
    r = out["tfdata_checkpoint"] = tfdata_checkpoint(byte, args.tfdata_batches)
    print(f"tf.data iterator checkpoint after {r['batches']} batches: "
          f"{r['state_bytes_per_host'] / 2**20:.1f} MiB per host, save {r['save_s']:.2f} s, "
          f"restore to the first batch {r['restore_s']:.2f} s")
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  entry.run(main)

"""A seqio task's preprocessed examples, written once to ArrayRecord shards (records.py).

The seqio task stays the definition of the data (source, tokenizer, cutting into examples); this
module runs it once, in document order, unshuffled, and stores what it yields. Training then reads
examples by index (examples.py), so resuming at any position costs the same, and the tokenizer
runs once per corpus instead of once per epoch and per restart. ``scripts/prepare_data.py`` does it
ahead of a run, sharded over worker processes; a pipeline that finds a split unprepared prepares
it on first use, in its own process.

Where: ``<records_dir>/<task>/L<seq_len>-<hash of the documents' fingerprint>/<split>/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import multiprocessing
import os
import shutil
import time
import uuid

from infini_jax.data import quiet_tf  # noqa: F401, I001  (first: a quiet TensorFlow import)
import seqio
import tensorflow as tf

from infini_jax.data import corpus, records, tasks
from infini_jax.data.config import DataConfig
from infini_jax.errors import UserError

log = logging.getLogger("infini_jax")
# TensorFlow only runs the seqio tasks here; keep it off the accelerators JAX uses.
tf.config.set_visible_devices([], "GPU")


def records_root(cfg: DataConfig) -> str:
  """``DataConfig.records_dir``, else ``records/`` under the TFDS data folder."""
  root = cfg.records_dir or os.path.join(cfg.data_dir or os.path.join("~", "tensorflow_datasets"),
                                         "infini_jax_records")
  if "://" in root:
    raise UserError(f"prepared examples at {root!r}: they are read with local file I/O; set "
                    "DataConfig.records_dir to a local or mounted folder")
  return os.path.expanduser(root)


def split_dir(cfg: DataConfig, task: str, split: str) -> str:
  """The folder of ``split`` of the seqio ``task`` at ``cfg.seq_len``."""
  fingerprint = getattr(seqio.get_mixture_or_task(task).source, "fingerprint", "")
  digest = hashlib.sha1(fingerprint.encode()).hexdigest()[:10]
  return os.path.join(records_root(cfg), task, f"L{cfg.seq_len}-{digest}", split)


def _examples(task: str, split: str, seq_len: int, shard: int, shards: int):
  """The task's examples of one shard of ``split``, in order, as numpy dicts."""
  features = seqio.get_mixture_or_task(task).output_features
  ds = seqio.get_dataset(
      mixture_or_task_name=task, task_feature_lengths={k: seq_len for k in features},
      feature_converter=seqio.PassThroughFeatureConverter(), dataset_split=split, shuffle=False,
      num_epochs=1, shard_info=seqio.ShardInfo(index=shard, num_shards=shards), seed=0,
      use_cached=False, verbose=False)
  return ds.as_numpy_iterator()


def _layout(task: str) -> list[tuple[str, type]]:
  """[(feature, numpy dtype)] of the task's examples, the usual four first."""
  features = seqio.get_mixture_or_task(task).output_features
  names = [k for k in tasks.FEATURES if k in features] + sorted(set(features) - set(tasks.FEATURES))
  return [(k, features[k].dtype.as_numpy_dtype) for k in names]


def _write_shard(job) -> tuple[int, float]:
  """One worker's job: (config, extra corpora, task, split, shard, shards, folder) -> (count,
  seconds). Re-registers the task, since a worker process starts with the default ones only."""
  cfg, extra_corpora, task, split, shard, shards, folder = job
  for name, spec in extra_corpora.items():
    corpus.CORPORA.setdefault(name, spec)
  tasks.task_name(cfg)
  start = time.perf_counter()
  decoder = records.Decoder(_layout(task), cfg.seq_len)
  count = records.write_shard(os.path.join(folder, records.shard_name(shard, shards)),
                              _examples(task, split, cfg.seq_len, shard, shards), decoder)
  return count, time.perf_counter() - start


def prepare(cfg: DataConfig, task: str, split: str, shards: int = 1, workers: int = 1,
            overwrite: bool = False) -> dict:
  """Writes ``split`` of ``task`` (a component of ``tasks.task_name(cfg)``) unless it is there;
  returns its info (records.write_info) plus "seconds" when it was written now.

  ``shards`` > 1 splits the documents into that many shards (seqio.ShardInfo), written by
  ``workers`` processes. The shards and their order are part of the data: prepare with the same
  number again to get the same examples. Several processes may prepare the same split at once:
  the processes of a host wait for each other (a file lock); processes on hosts that share the
  folder without working locks each write a folder of their own, and the first to finish renames
  it into place.
  """
  folder = split_dir(cfg, task, split)
  info = records.read_info(folder)
  if info is not None and not overwrite:
    return info
  os.makedirs(os.path.dirname(folder), exist_ok=True)
  with _lock(folder + ".lock"):   # the processes of one host prepare it once, one after another
    info = records.read_info(folder)
    if info is not None and not overwrite:
      return info
    return _prepare(cfg, task, split, folder, shards, workers, overwrite)


@contextlib.contextmanager
def _lock(path: str):
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _prepare(cfg, task, split, folder, shards, workers, overwrite) -> dict:
  scratch = f"{folder}.tmp-{uuid.uuid4().hex[:8]}"
  os.makedirs(scratch)
  extra = {k: v for k, v in corpus.CORPORA.items() if k not in corpus.BUILT_IN}
  jobs = [(cfg, extra, task, split, i, shards, scratch) for i in range(shards)]
  start = time.perf_counter()
  try:
    if workers > 1:
      source = seqio.get_mixture_or_task(task).source
      if hasattr(source, "ready"):
        source.ready()   # one build of the documents, not one per worker
      with multiprocessing.get_context("spawn").Pool(min(workers, shards)) as pool:
        done = pool.map(_write_shard, jobs)
    else:
      done = [_write_shard(job) for job in jobs]
    fingerprint = getattr(seqio.get_mixture_or_task(task).source, "fingerprint", "")
    info = records.write_info(scratch, records.Decoder(_layout(task), cfg.seq_len),
                              [n for n, _ in done], {"task": task, "split": split,
                                                     "fingerprint": fingerprint})
    if overwrite and os.path.isdir(folder):
      shutil.rmtree(folder)
    try:
      os.rename(scratch, folder)
    except OSError:
      if records.read_info(folder) is None:   # not another process's finished copy
        raise
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  seconds = time.perf_counter() - start
  log.info("prepared %d examples of %s/%s in %.1f s: %s", info["examples"], task, split, seconds,
           folder)
  return {**info, "seconds": seconds, "shard_seconds": [s for _, s in done]}

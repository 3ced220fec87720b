"""Where the trainer's batches come from: the seqio pipeline, exported batches, or synthetic tokens.

The seqio pipeline (``infini_jax.data``) imports TensorFlow, so it is imported only when a run reads
real data. Exported batches (``scripts/export_data.py`` writes the seqio pipeline's batches to
.npz files) and synthetic batches need nothing beyond numpy: they serve machines without
TensorFlow (a GPU image), benchmarks and smoke tests.
"""

import dataclasses
import json
import os

import jax
import numpy as np

from infini_jax.data import state as data_state
from infini_jax.data.config import check_batch_shape
from infini_jax.errors import UserError

FIELDS = ("inputs", "targets", "loss_mask", "memory_weight")


@dataclasses.dataclass(frozen=True)
class SyntheticData:
  """Uniform random tokens; batch k depends only on (seed, k), whatever the number of processes.

  ``poison_batches``: positions of train batches whose loss mask is NaN, a divergence injected
  on purpose (fault-injection tests and drills of ``train.on_divergence``).
  """
  batch_size: int = 8
  seq_len: int = 1024
  segment_len: int = 256
  seed: int = 0
  poison_batches: tuple = ()

  def __post_init__(self):
    check_batch_shape(self.batch_size, self.seq_len, self.segment_len)


@dataclasses.dataclass(frozen=True)
class ExportedData:
  """The examples of a ``DataConfig``, exported in its pipeline's order by
  ``scripts/export_data.py``, read with numpy alone.

  ``directory`` holds ``info.json`` (the source DataConfig: task, vocabulary, ...) and one
  ``<split>-<seq_len>.npz`` per split and example length, each with the arrays of ``FIELDS``,
  ``[examples, seq_len]``. Global batch k is rows ``[k * batch_size, (k + 1) * batch_size)``, so
  with the export's batch size a run reads exactly the batches the seqio pipeline gives. The train
  split holds as many batches as were exported (no repeat); any other split is read once.
  """
  directory: str = ""
  batch_size: int = 8
  seq_len: int = 2048
  segment_len: int = 256

  def __post_init__(self):
    check_batch_shape(self.batch_size, self.seq_len, self.segment_len)
    if not os.path.isfile(os.path.join(self.directory, "info.json")):
      raise UserError(f"ExportedData.directory {self.directory!r} holds no info.json; write it "
                      "with scripts/export_data.py --out=DIR, then bind ExportedData.directory")

  @property
  def segments(self) -> int:
    return self.seq_len // self.segment_len

  def info(self) -> dict:
    """The export's ``info.json``: its DataConfig's fields ("task", "vocabulary", ...)."""
    with open(os.path.join(self.directory, "info.json")) as f:
      return json.load(f)

  @property
  def task(self) -> str:
    return self.info()["task"]

  @property
  def vocabulary(self) -> str:
    return self.info()["vocabulary"]

  def path(self, split: str) -> str:
    return os.path.join(self.directory, f"{split}-{self.seq_len}.npz")


class _HostRows:
  """Process i of n takes rows [i * local, (i + 1) * local) of each global batch; ``position``
  counts the global batches consumed (what a checkpoint saves, ``state()``)."""

  def __init__(self, cfg, shard_index: int, num_shards: int, start_position):
    if cfg.batch_size % num_shards:
      raise UserError(f"global batch_size {cfg.batch_size} is not divisible by {num_shards} "
                      f"processes; set the batch size to a multiple of {num_shards}")
    self.cfg = cfg
    self.rows = slice(shard_index * cfg.batch_size // num_shards,
                      (shard_index + 1) * cfg.batch_size // num_shards)
    # Batch k depends on k alone: an old checkpoint's batch count is exact here too.
    self.position = data_state.position_of(start_position, cfg.batch_size)

  def state(self) -> dict:
    return data_state.make(self.position, self.cfg.batch_size)

  def next_global(self, sharding=None) -> dict:
    local = self.next_local()
    if sharding is None:
      return local
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


class SyntheticPipeline(_HostRows):
  """Per-host view of :class:`SyntheticData`. The "train" split and every other split draw from
  different random streams."""

  def __init__(self, cfg: SyntheticData, vocab_size: int, shard_index: int, num_shards: int,
               start_position=0, split: str = "train"):
    super().__init__(cfg, shard_index, num_shards, start_position)
    self.vocab_size = vocab_size
    self.stream = 0 if split == "train" else 1

  def next_local(self) -> dict:
    rng = np.random.default_rng([self.cfg.seed, self.stream, self.position])
    tokens = rng.integers(0, self.vocab_size, (self.cfg.batch_size, self.cfg.seq_len + 1),
                          dtype=np.int32)[self.rows]
    ones = np.ones(tokens[:, 1:].shape, np.float32)
    mask = ones * np.nan if self.stream == 0 and self.position in self.cfg.poison_batches else ones
    self.position += 1
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask,
            "memory_weight": ones}


class ExportedPipeline(_HostRows):
  """Per-host view of :class:`ExportedData`'s ``split``. A last partial batch (read with another
  batch size than the export's) is filled with all-zero rows (loss_mask 0), as the seqio pipeline
  fills a held-out split's."""

  def __init__(self, cfg: ExportedData, shard_index: int, num_shards: int, start_position=0,
               split: str = "train"):
    super().__init__(cfg, shard_index, num_shards, start_position)
    self.split, path = split, cfg.path(split)
    if not os.path.isfile(path):
      raise UserError(f"{path} is missing: export the {split} split at seq_len {cfg.seq_len} "
                      f"(scripts/export_data.py --seq_lens={cfg.seq_len})")
    with np.load(path) as arrays:
      self.arrays = {k: arrays[k] for k in FIELDS}
    if self.arrays["inputs"].shape[1:] != (cfg.seq_len,):
      raise UserError(f"{path} holds examples of shape {self.arrays['inputs'].shape[1:]}, not "
                      f"({cfg.seq_len},); bind ExportedData.seq_len to the export's seq_len")

  def next_local(self) -> dict:
    examples, b = len(self.arrays["inputs"]), self.cfg.batch_size
    start = self.position * b
    if start >= examples:
      if self.split == "train":
        raise UserError(f"{self.cfg.path('train')} holds {examples // b} batches of {b}; the run "
                        f"reads batch {self.position + 1}: export more "
                        "(scripts/export_data.py --train_batches=N) or train fewer steps")
      raise StopIteration
    rows = range(start + self.rows.start, start + self.rows.stop)
    self.position += 1
    dtypes = {"inputs": np.int32, "targets": np.int32}
    return {k: np.stack([v[i] if i < examples else np.zeros_like(v[0]) for i in rows])
            .astype(dtypes.get(k, np.float32)) for k, v in self.arrays.items()}


def make_pipeline(data_cfg, split: str, vocab_size: int, start_position=0):
  """A per-host pipeline with ``next_global(sharding)``, ``position`` (global batches consumed)
  and ``state()`` (what a checkpoint saves), for this process. ``start_position``: a ``state()``
  saved by a run with any number of processes, or a count of batches."""
  shard, shards = jax.process_index(), jax.process_count()
  if isinstance(data_cfg, SyntheticData):
    return SyntheticPipeline(data_cfg, vocab_size, shard, shards, start_position, split)
  if isinstance(data_cfg, ExportedData):
    return ExportedPipeline(data_cfg, shard, shards, start_position, split)
  from infini_jax import data  # TensorFlow and seqio, only when real data is read
  return data.build_pipeline(data_cfg, split=split, shard_index=shard, num_shards=shards,
                             start_position=start_position)

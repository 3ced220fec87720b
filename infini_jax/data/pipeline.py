"""Per-host input: this process's shard of a task, in local batches, assembled into global arrays.

The position (batches consumed) is what a checkpoint saves; a pipeline built with
`start_position=k` yields exactly the batches a fresh one yields after its first k. Resuming
re-reads and drops those k batches (deterministic given the seed), so its cost grows with k.
"""

from __future__ import annotations


import numpy as np
from infini_jax.data import quiet_tf  # noqa: F401, I001  (first: a quiet TensorFlow import)
import seqio
import tensorflow as tf

from infini_jax.data import tasks
from infini_jax.data.config import DataConfig
from infini_jax.errors import UserError

# TensorFlow only feeds the input pipeline here; keep it off the accelerators JAX uses.
tf.config.set_visible_devices([], "GPU")


class Pipeline:
  """Batches of {"inputs", "targets", "loss_mask", "memory_weight"} for one process (a task of
  your own may leave out "memory_weight"); see `build_pipeline`."""

  def __init__(self, cfg: DataConfig, split: str, shard_index: int, num_shards: int,
               start_position: int = 0):
    if not 0 <= shard_index < num_shards:
      raise ValueError(f"shard_index {shard_index} must be in [0, num_shards={num_shards})")
    if cfg.batch_size % num_shards:
      raise UserError(f"batch_size {cfg.batch_size} is not divisible by the {num_shards} "
                      f"processes; set batch_size to a multiple of {num_shards}")
    self.cfg, self.split = cfg, split
    self.shard_index, self.num_shards = shard_index, num_shards
    self.local_batch_size = cfg.batch_size // num_shards
    self.task = tasks.task_name(cfg)
    self.restore(start_position)

  def _dataset(self) -> tf.data.Dataset:
    cfg, train = self.cfg, self.split == "train"
    ds = seqio.get_dataset(
        mixture_or_task_name=self.task,
        task_feature_lengths={k: cfg.seq_len for k in seqio.get_mixture_or_task(
            self.task).output_features},
        feature_converter=seqio.PassThroughFeatureConverter(),
        dataset_split=self.split,
        shuffle=cfg.shuffle and train,
        num_epochs=None if train else 1,
        shard_info=seqio.ShardInfo(index=self.shard_index, num_shards=self.num_shards),
        seed=cfg.seed,
        use_cached=False,
        verbose=False)
    b = self.local_batch_size
    if train:
      return ds.batch(b, drop_remainder=True)
    # The last validation batch is filled with rows whose loss_mask is 0, so no example is lost.
    ds = ds.batch(b).map(lambda ex: {k: tf.pad(v, [[0, b - tf.shape(v)[0]], [0, 0]])
                                     for k, v in ex.items()})
    return ds.map(lambda ex: {k: tf.ensure_shape(v, [b, cfg.seq_len]) for k, v in ex.items()})

  @property
  def position(self) -> int:
    """Batches consumed so far."""
    return self._position

  def restore(self, position: int) -> None:
    """Continue with batch `position` (0-based): the first one not yet consumed."""
    if position < 0:
      raise ValueError(f"position {position} must be >= 0")
    self._position = position
    self._iterator = self._dataset().skip(position).prefetch(2).as_numpy_iterator()

  def next_local(self) -> dict[str, np.ndarray]:
    """This process's batch [local_batch, seq_len]; StopIteration at the end of validation."""
    batch = next(self._iterator)
    self._position += 1
    return batch

  def next_global(self, sharding=None):
    """The global batch as jax.Arrays laid out by `sharding`, or this process's numpy batch."""
    local = self.next_local()
    if sharding is None:
      return local
    import jax  # only the assembly of global arrays needs JAX
    shape = (self.cfg.batch_size, self.cfg.seq_len)
    return {k: jax.make_array_from_process_local_data(sharding, v, shape)
            for k, v in local.items()}

  def __iter__(self):
    return self

  def __next__(self):
    return self.next_local()


def build_pipeline(cfg: DataConfig, split: str = "train", shard_index: int = 0,
                   num_shards: int = 1, start_position: int = 0) -> Pipeline:
  """The input of process `shard_index` of `num_shards` (jax.process_index / process_count).

  split "train" repeats forever (shuffled if cfg.shuffle); any other split ("validation") is read
  once, in order. `start_position=k` continues after the first k batches.
  """
  return Pipeline(cfg, split, shard_index, num_shards, start_position)

"""Per-host input: this process's rows of each global batch, read by index, assembled into arrays.

The global sequence of examples (examples.py) is cut into global batches of ``batch_size``; of
global batch k, process i of n takes rows [i * b, (i + 1) * b), b = batch_size / n. So global batch
k is the same, row for row, whatever the number of processes, and the input state a checkpoint
saves is one number, the global batches consumed (state.py). Resuming at batch k reads batch k
directly: its cost does not depend on k, and a run may resume with another number of processes.

Reading runs in ``read_threads`` threads of this process (array_record and numpy release the
GIL), or in ``read_workers`` worker processes (grain's mp_prefetch) for more cores.
"""

from __future__ import annotations

import logging

import grain
import numpy as np
from absl import flags

from infini_jax.data import examples as examples_lib
from infini_jax.data import state as state_lib
from infini_jax.data.config import DataConfig
from infini_jax.errors import UserError

log = logging.getLogger("infini_jax")


class _PadTo:
  """index -> example ``index`` of ``examples``, or an all-zero example (loss_mask 0) past its end."""

  def __init__(self, examples: grain.MapDataset):
    self.examples = examples
    self.zeros = {k: np.zeros_like(v) for k, v in examples[0].items()}

  def __call__(self, index: int) -> dict:
    return self.examples[index] if index < len(self.examples) else self.zeros


class Pipeline:
  """Batches of {"inputs", "targets", "loss_mask", "memory_weight"} [local_batch, seq_len] for one
  process (a task of your own may leave out "memory_weight"); see `build_pipeline`."""

  def __init__(self, cfg: DataConfig, split: str, shard_index: int, num_shards: int,
               start=0):
    if not 0 <= shard_index < num_shards:
      raise ValueError(f"shard_index {shard_index} must be in [0, num_shards={num_shards})")
    if cfg.batch_size % num_shards:
      raise UserError(f"batch_size {cfg.batch_size} is not divisible by the {num_shards} "
                      f"processes; set batch_size to a multiple of {num_shards}")
    self.cfg, self.split = cfg, split
    self.shard_index, self.num_shards = shard_index, num_shards
    self.local_batch_size = cfg.batch_size // num_shards
    examples = examples_lib.global_examples(cfg, split)
    if split != "train":
      # A whole number of global batches, so every process reads as many; the rows past the
      # end have loss_mask 0, and no example is lost.
      count = -(-len(examples) // cfg.batch_size) * cfg.batch_size
      examples = grain.MapDataset.range(count).map(_PadTo(examples))
    self._local_batches = examples.batch(self.local_batch_size)
    self._iterator = None
    self.restore(start)

  @property
  def position(self) -> int:
    """Global batches consumed so far."""
    return self._position

  def state(self) -> dict:
    """What a checkpoint saves; `restore` (with any number of processes) continues from it."""
    return state_lib.make(self._position, self.cfg.batch_size)

  def restore(self, state) -> None:
    """Continue after the batches ``state`` consumed: a dict of `state`, or a batch count."""
    position = state_lib.position_of(state, self.cfg.batch_size)
    if position < 0:
      raise ValueError(f"position {position} must be >= 0")
    if state_lib.is_legacy(state) and position and self.split == "train":
      log.warning("the checkpoint saved only a batch count (%d), from before the input state: "
                  "resuming at global batch %d of today's example order, which differs from the "
                  "old one: examples of this epoch may repeat or be missed once", position,
                  position)
    self.close()
    self._position = position
    n, i = self.num_shards, self.shard_index
    # Local batch j is rows [j*b, (j+1)*b) of the global stream: process i takes j = k*n + i.
    mine = self._local_batches[position * n + i::n]
    threads = self.cfg.read_threads
    ds = mine.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                prefetch_buffer_size=2 * threads))
    if self.cfg.read_workers:
      if not flags.FLAGS.is_parsed():   # grain's workers read absl flags; gin is our command line
        flags.FLAGS.mark_as_parsed()
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.cfg.read_workers))
    self._iterator = iter(ds)

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

  def close(self) -> None:
    """Stops the reader threads or worker processes."""
    if self._iterator is not None and hasattr(self._iterator, "close"):
      self._iterator.close()
    self._iterator = None

  def __iter__(self):
    return self

  def __next__(self):
    return self.next_local()


def build_pipeline(cfg: DataConfig, split: str = "train", shard_index: int = 0,
                   num_shards: int = 1, start_position=0) -> Pipeline:
  """The input of process `shard_index` of `num_shards` (jax.process_index / process_count).

  split "train" repeats forever (shuffled each epoch if cfg.shuffle); any other split
  ("validation") is read once, in order. `start_position`: the batches already consumed, a count
  or a `Pipeline.state()` (from a run with any number of processes).
  """
  return Pipeline(cfg, split, shard_index, num_shards, start_position)

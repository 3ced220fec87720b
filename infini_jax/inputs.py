"""Where the trainer's batches come from: the seqio pipeline, or synthetic tokens.

The seqio pipeline (``infini_jax.data``) imports TensorFlow, so it is imported only when a run reads
real data; synthetic batches need nothing beyond numpy and serve benchmarks, smoke tests and
machines without TensorFlow.
"""

import dataclasses

import jax
import numpy as np

from infini_jax.data import state as data_state
from infini_jax.data.config import check_batch_shape
from infini_jax.errors import UserError


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


class SyntheticPipeline:
  """Per-host view of :class:`SyntheticData`: process i takes rows [i*local, (i+1)*local).

  The "train" split and every other split draw from different random streams.
  """

  def __init__(self, cfg: SyntheticData, vocab_size: int, shard_index: int, num_shards: int,
               start_position=0, split: str = "train"):
    if cfg.batch_size % num_shards:
      raise UserError(f"global batch_size {cfg.batch_size} is not divisible by {num_shards} "
                      f"processes; set the batch size to a multiple of {num_shards}")
    self.cfg, self.vocab_size = cfg, vocab_size
    self.rows = slice(shard_index * cfg.batch_size // num_shards,
                      (shard_index + 1) * cfg.batch_size // num_shards)
    # Batch k depends on k alone: an old checkpoint's batch count is exact here too.
    self.position = data_state.position_of(start_position, cfg.batch_size)
    self.stream = 0 if split == "train" else 1

  def state(self) -> dict:
    return data_state.make(self.position, self.cfg.batch_size)

  def next_local(self) -> dict:
    rng = np.random.default_rng([self.cfg.seed, self.stream, self.position])
    tokens = rng.integers(0, self.vocab_size, (self.cfg.batch_size, self.cfg.seq_len + 1),
                          dtype=np.int32)[self.rows]
    ones = np.ones(tokens[:, 1:].shape, np.float32)
    mask = ones * np.nan if self.stream == 0 and self.position in self.cfg.poison_batches else ones
    self.position += 1
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask,
            "memory_weight": ones}

  def next_global(self, sharding=None) -> dict:
    local = self.next_local()
    if sharding is None:
      return local
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def make_pipeline(data_cfg, split: str, vocab_size: int, start_position=0):
  """A per-host pipeline with ``next_global(sharding)``, ``position`` (global batches consumed)
  and ``state()`` (what a checkpoint saves), for this process. ``start_position``: a ``state()``
  saved by a run with any number of processes, or a count of batches."""
  if isinstance(data_cfg, SyntheticData):
    return SyntheticPipeline(data_cfg, vocab_size, jax.process_index(), jax.process_count(),
                             start_position, split)
  from infini_jax import data  # TensorFlow and seqio, only when real data is read
  return data.build_pipeline(data_cfg, split=split, shard_index=jax.process_index(),
                             num_shards=jax.process_count(), start_position=start_position)

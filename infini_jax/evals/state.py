"""What a model keeps per sequence to go on reading: the paper's compression claim, measured.

Two parts, in numbers and bytes per sequence:
- carried: what passes from one segment to the next. infini: every layer's M and z (float32);
  xl: the previous segment's keys and values per layer (its last ``previous_len`` tokens when
  set); infini with ``local_context="two_segments"``: both; none: nothing.
- cache: the keys and values of the current segment, ``2 x N x H_kv x d x L`` in the compute
  dtype, which every model holds while it reads a segment. For full causal attention (``none``
  with one segment as long as the input) this is the whole input's cache.
"""

import numpy as np

from infini_jax.model.config import ModelConfig


def state_per_sequence(cfg: ModelConfig) -> dict:
  """``{"carried": {numbers, bytes}, "cache": {numbers, bytes}, "total_bytes"}`` for one sequence."""
  compute = np.dtype(cfg.compute_dtype).itemsize
  carried = cfg.memory_state_size()
  carried_bytes = cfg.compressive_state_size() * 4 + cfg.previous_segment_size() * compute
  cache = 2 * cfg.segment_len * cfg.num_kv_heads * cfg.dim_per_head * cfg.num_layers
  return {"carried": {"numbers": carried, "bytes": carried_bytes},
          "cache": {"numbers": cache, "bytes": cache * compute},
          "total_bytes": carried_bytes + cache * compute}


def describe(cfg: ModelConfig) -> str:
  """One line: the state per sequence, by part."""
  state = state_per_sequence(cfg)
  parts = [name for name, size in (("M and z", cfg.compressive_state_size()),
                                    ("previous segment's K/V", cfg.previous_segment_size())) if size]
  carried = " + ".join(parts) or "nothing"
  return (f"carried {carried}: {state['carried']['numbers']:,} numbers "
          f"({state['carried']['bytes'] / 1024:,.1f} KiB); segment K/V cache ({cfg.segment_len} "
          f"tokens): {state['cache']['numbers']:,} ({state['cache']['bytes'] / 1024:,.1f} KiB)")

"""Transformer-XL attention (Dai et al. 2019), the paper's Table 2 baseline: ``memory="xl"``.

Each layer attends causally inside its segment and, in full, to the previous segment's keys and
values, which come through the segment scan's carry and take no gradient (``stop_gradient``).
RoPE is relative, so the previous segment's keys sit at positions ``-N..-1`` of the current one:
here both segments are rotated together at ``0..2N-1`` and the queries at ``N..2N-1``. With
``ModelConfig.previous_len = m < N`` (beyond the paper) only the previous segment's last m tokens
are carried, at ``-m..-1``.

Shapes: ``q [batch, n, heads, d]``; ``k, v [batch, n, kv_heads, d]``; the carried state holds the
previous segment's un-rotated ``k, v [batch, m, kv_heads, d]`` and ``written [batch, m]``: which
of its tokens may be attended to (all False for an empty state, and for tokens written with
weight 0).

The attention is a plain masked softmax (XLA) whatever ``ModelConfig.attention_impl`` says: the
baseline is for comparisons at small scale, not for speed.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from infini_jax import memory as mem
from infini_jax.model.layers import masked_attention


class PrevSegment(NamedTuple):
  """One layer's carry: the previous segment's last m raw ``k, v [batch, m, kv_heads, d]`` and
  ``written [batch, m]`` bool (False: never attended to)."""

  k: jax.Array
  v: jax.Array
  written: jax.Array


class WithPrevious(NamedTuple):
  """One layer's carry with ``local_context="two_segments"`` (beyond the paper): the compressive
  memory and the previous segment that the local attention also sees."""

  memory: mem.Memory
  prev: PrevSegment


def init_prev(batch: int, length: int, kv_heads: int, head_dim: int, dtype) -> PrevSegment:
  """An empty carry of ``length`` tokens (``ModelConfig.carried_len``): nothing written."""
  zeros = jnp.zeros((batch, length, kv_heads, head_dim), dtype)
  return PrevSegment(zeros, zeros, jnp.zeros((batch, length), bool))


def drop_previous(carry, keep: jax.Array):
  """The carry with the previous segment hidden from the rows where ``keep [batch]`` (bool) is
  False: their next segment attends to its own tokens alone, as at a sequence's start (a drop of
  the carried window in training). ``carry``: a :class:`PrevSegment` or :class:`WithPrevious`
  whose ``written`` is ``[..., batch, m]`` (stacked over layers or not); the compressive memory
  is kept."""
  if isinstance(carry, WithPrevious):
    return carry._replace(prev=drop_previous(carry.prev, keep))
  return carry._replace(written=carry.written & keep[:, None])


def xl_attention(q: jax.Array, k: jax.Array, v: jax.Array, prev: PrevSegment, rotate,
                 write_weight: jax.Array | None = None):
  """One segment's XL attention and the state handed to the next segment.

  ``q, k, v``: this segment's raw projections ``[b, n, ...]``; ``prev``: the carry, the previous
  segment's last ``m <= n`` tokens (``ModelConfig.carried_len``); ``rotate(x, positions)``: RoPE.
  ``write_weight [b, n]`` (None: ones): tokens of weight 0 are not handed on (a knock-out writes
  nothing). Returns (``[b, n, heads, d]``, the next :class:`PrevSegment`: this segment's last m).
  """
  b, n = q.shape[:2]
  m = prev.k.shape[1]
  keys = jnp.concatenate([jax.lax.stop_gradient(prev.k).astype(k.dtype), k], axis=1)
  values = jnp.concatenate([jax.lax.stop_gradient(prev.v).astype(v.dtype), v], axis=1)
  positions = np.arange(m + n)      # static: RoPE's tables are constants (layers.rope)
  causal = positions[None, :] <= positions[m:, None]                     # [n, m + n]
  written = jnp.concatenate([prev.written, jnp.ones((b, n), bool)], axis=1)
  out = masked_attention(rotate(q, positions[m:]), rotate(keys, positions), values,
               causal[None] & written[:, None, :])
  handed_on = jnp.ones((b, n), bool) if write_weight is None else write_weight > 0
  return out, PrevSegment(k[:, n - m:], v[:, n - m:], handed_on[:, n - m:])

"""Infini-attention for one segment (eqs. 6-11): local causal attention + compressive memory, gated.

Shapes: ``x [batch, seg, d_model]``; ``q [batch, seg, heads, head_dim]``;
``k, v [batch, seg, kv_heads, head_dim]``; the memory holds one ``(M, z)`` per key/value head.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from infini_jax import memory as mem
from infini_jax.model.config import ModelConfig
from infini_jax.model.layers import fan_in_init, param, rope
from infini_jax.sharding import constrain


def local_attention(q: jax.Array, k: jax.Array, v: jax.Array, impl: str) -> jax.Array:
  """Causal softmax attention inside the segment (eq. 6), with grouped key/value heads.

  ``q [b, n, heads, d]``, ``k, v [b, n, kv_heads, d]`` -> ``[b, n, heads, d]``.
  """
  if impl == "reference":
    group = q.shape[2] // k.shape[2]
    k, v = (jnp.repeat(t, group, axis=2) for t in (k, v))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(q.shape[-1]))
    causal = jnp.tril(jnp.ones((q.shape[1], k.shape[1]), bool))
    weights = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
  return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)


def retrieve_grouped(memory: mem.Memory, q: jax.Array) -> jax.Array:
  """Eq. 7 for grouped query heads: query head ``h`` reads the memory of key/value head ``h // G``.

  The G query heads of a group are folded into the ``seq`` axis of :func:`memory.retrieve`.
  ``q [b, n, heads, d_key]`` -> float32 ``[b, n, heads, d_value]``.
  """
  b, n, heads, d_key = q.shape
  kv_heads = memory.M.shape[1]
  group = heads // kv_heads
  folded = q.reshape(b, n, kv_heads, group, d_key).swapaxes(2, 3).reshape(b, n * group, kv_heads, d_key)
  read = mem.retrieve(memory, folded)
  d_value = read.shape[-1]
  return read.reshape(b, n, group, kv_heads, d_value).swapaxes(2, 3).reshape(b, n, heads, d_value)


class InfiniAttention(nnx.Module):
  """Multi-head attention whose heads mix a local and a memory read through a learned gate beta."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d, h, kv = cfg.dim_per_head, cfg.num_heads, cfg.num_kv_heads
    init_in, init_out = fan_in_init(1), fan_in_init(2)
    self.w_q = param(rngs, init_in, (cfg.d_model, h, d), ("embed", "heads", "head_dim"))
    self.w_k = param(rngs, init_in, (cfg.d_model, kv, d), ("embed", "kv_heads", "head_dim"))
    self.w_v = param(rngs, init_in, (cfg.d_model, kv, d), ("embed", "kv_heads", "head_dim"))
    self.w_o = param(rngs, init_out, (h, d, cfg.d_model), ("heads", "head_dim", "embed"))
    if cfg.qkv_bias:
      zeros = nnx.initializers.zeros
      self.b_q = param(rngs, zeros, (h, d), ("heads", "head_dim"))
      self.b_k = param(rngs, zeros, (kv, d), ("kv_heads", "head_dim"))
      self.b_v = param(rngs, zeros, (kv, d), ("kv_heads", "head_dim"))
    if cfg.memory == "infini":
      self.beta = param(rngs, nnx.initializers.constant(cfg.gate_init), (h,), ("heads",))

  def project(self, x: jax.Array):
    """``x [b, n, d_model]`` -> raw (un-rotated) ``q [b, n, heads, d]``, ``k, v [b, n, kv_heads, d]``."""
    def project(name):
      out = jnp.einsum("bnd,dhk->bnhk", x, getattr(self, "w_" + name)[...].astype(x.dtype))
      return out + getattr(self, "b_" + name)[...].astype(x.dtype) if self.cfg.qkv_bias else out

    return (constrain(project("q"), ("batch", "seq", "heads", "head_dim")),
            constrain(project("k"), ("batch", "seq", "kv_heads", "head_dim")),
            constrain(project("v"), ("batch", "seq", "kv_heads", "head_dim")))

  def rotate(self, x: jax.Array, positions: jax.Array | None = None) -> jax.Array:
    """RoPE with the config's theta and scaling (see :func:`layers.rope`)."""
    return rope(x, self.cfg.rope_theta, positions, scaling=self.cfg.rope_scaling)

  def output(self, local: jax.Array, q: jax.Array, memory: mem.Memory | None) -> jax.Array:
    """Gate (eq. 10) the local result with the memory read by the raw ``q``, then W_O (eq. 11).

    ``local [b, n, heads, d]``, ``q [b, n, heads, d]``; memory: the state before this segment's
    write (unused without memory) -> ``[b, n, d_model]``.
    """
    dtype = local.dtype
    if self.cfg.memory == "infini":
      from_memory = retrieve_grouped(memory, q)
      gate = jax.nn.sigmoid(self.beta[...])[:, None]                # [heads, 1]
      local = (gate * from_memory + (1.0 - gate) * local.astype(jnp.float32)).astype(dtype)
    out = jnp.einsum("bnhk,hkd->bnd", local, self.w_o[...].astype(dtype))
    return constrain(out, ("batch", "seq", "embed"))

  def __call__(self, x: jax.Array, memory: mem.Memory | None,
               write_weight: jax.Array | None = None):
    """``x [b, n, d_model]``, memory of the previous segments -> (``[b, n, d_model]``, new memory).

    ``write_weight [b, n]`` (None: ones): each token's weight in the memory write (``memory.update``).
    """
    cfg = self.cfg
    q, k, v = self.project(x)
    # RoPE on the local path only: the memory reads and writes the un-rotated q, k.
    local = local_attention(self.rotate(q), self.rotate(k), v, cfg.attention_impl)
    out = self.output(local, q, memory)                             # reads before the write
    if cfg.memory == "infini":
      memory = mem.update(memory, k, v, cfg.update_rule, write_weight)
    return out, memory

"""Infini-attention for one segment (eqs. 6-11): local causal attention + compressive memory, gated.

Shapes: ``x [batch, seg, d_model]``; ``q [batch, seg, heads, head_dim]``;
``k, v [batch, seg, kv_heads, head_dim]``; the memory holds one ``(M, z)`` per key/value head.

The same layer serves training and decoding. Training calls it on whole segments (the model scans
it over them); decoding also passes a :class:`KVCache` of the current segment and each sequence's
place in it, and the layer attends to the cache, adds the new keys and values to it and writes the
segment into the memory once it is complete (Levanter's pattern: an optional cache in, the updated
cache out).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from infini_jax import memory as mem
from infini_jax.model import xl
from infini_jax.model.config import ModelConfig
from infini_jax.model.layers import (fan_in_init, heads_first_attention, masked_attention, param,
                                     rope, scoped)
from infini_jax.sharding import constrain, logical_to_spec

# Splash tiles (query and key/value, forward and backward), largest first: the first that divides
# the segment is used. The kernel needs multiples of 128 (one vector register's lanes).
SPLASH_BLOCKS = (512, 256, 128)
# Query rows per block of attention_impl="blocked" (measured fastest on CPU: BENCHMARKS §8).
CAUSAL_BLOCK = 128
Q_AXES = ("batch", "seq", "heads", "head_dim")
KV_AXES = ("batch", "seq", "kv_heads", "head_dim")
HEADS_FIRST_Q = ("batch", "kv_heads", None, "seq", "head_dim")     # [b, kv_heads, group, n, d]
HEADS_FIRST_KV = ("batch", "kv_heads", "seq", "head_dim")


def platform() -> str:
  """The platform traced code is compiled for: the active mesh's devices', else the default."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else mesh.abstract_device
  return jax.default_backend() if device is None else device.platform


def resolve_impl(impl: str, segment_len: int, dtype) -> str:
  """``"auto"`` -> splash on TPU, cuDNN flash attention on GPU in 16-bit floats, blocked on CPU,
  else XLA.

  On TPU a segment that is not a multiple of 128 (e.g. a short decode prefill) falls back to XLA.
  Any other ``impl`` is returned as it is.
  """
  if impl != "auto":
    return impl
  target = platform()
  if target == "tpu" and segment_len % SPLASH_BLOCKS[-1] == 0:
    return "splash"
  if target == "gpu" and dtype in (jnp.bfloat16, jnp.float16):
    return "cudnn"
  return "blocked" if target == "cpu" else "xla"


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                     interpret: bool | None = None) -> jax.Array:
  """Causal attention with grouped key/value heads by the Pallas splash-attention kernel.

  ``q [b, n, heads, d]``, ``k, v [b, n, kv_heads, d]`` -> ``[b, n, heads, d]``. ``interpret``
  (None: when not compiling for a TPU) runs the kernel in Pallas' interpreter, on any platform.
  Under a mesh the kernel runs inside ``shard_map`` on each device's batch rows and heads, as the
  logical-axis rules shard them; the segment itself must not be sharded.
  """
  n, d = q.shape[1], q.shape[3]
  block = next((b for b in SPLASH_BLOCKS if n % b == 0), None)
  if block is None:
    raise ValueError(f"splash attention tiles the segment in blocks of {SPLASH_BLOCKS[-1]}, but "
                     f"segment_len {n} is not a multiple of {SPLASH_BLOCKS[-1]}; set SEGMENT_LEN to "
                     f"a multiple of {SPLASH_BLOCKS[-1]} or attention_impl to 'xla'")
  interpret = platform() != "tpu" if interpret is None else interpret
  blocks = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                             block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                             block_q_dq=block, block_kv_dq=block)

  def attend(q, k, v):                                            # one device's rows and heads
    mask = splash.MultiHeadMask([splash.CausalMask((n, n))] * q.shape[2])
    kernel = splash.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1,
                                    interpret=interpret)
    heads_first = lambda x: x.swapaxes(0, 1)                      # [n, h, d] <-> [h, n, d]
    one_row = lambda q, k, v: heads_first(kernel(heads_first(q), heads_first(k), heads_first(v)))
    return jax.vmap(one_row)(q * jnp.asarray(d ** -0.5, q.dtype), k, v)   # splash does not scale

  if jax.sharding.get_abstract_mesh().empty:
    return attend(q, k, v)
  q_spec, kv_spec = logical_to_spec(Q_AXES), logical_to_spec(KV_AXES)
  if q_spec[1] is not None or kv_spec[1] is not None:
    raise ValueError(f"splash attention needs the whole segment on each device, but the sharding "
                     f"rules shard 'seq' over {q_spec[1] or kv_spec[1]}; map 'seq' to None")
  return jax.shard_map(attend, in_specs=(q_spec, kv_spec, kv_spec), out_specs=q_spec,
                       check_vma=False)(q, k, v)


@scoped("local_attention")
def local_attention(q: jax.Array, k: jax.Array, v: jax.Array, impl: str) -> jax.Array:
  """Causal softmax attention inside the segment (eq. 6), with grouped key/value heads.

  ``q [b, n, heads, d]``, ``k, v [b, n, kv_heads, d]`` -> ``[b, n, heads, d]``. ``impl``: one of
  ``config.ATTENTION_IMPLS`` (see :func:`resolve_impl` for "auto").
  """
  impl = resolve_impl(impl, q.shape[1], q.dtype)
  if impl == "splash":
    return splash_attention(q, k, v)
  if impl == "reference":
    return attend_up_to(q, k, v, jnp.arange(q.shape[1]))
  if impl == "blocked":
    return blocked_attention(q, k, v)
  return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)


def blocked_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                      block: int = CAUSAL_BLOCK) -> jax.Array:
  """Causal attention one block of ``block`` query rows at a time, heads first.

  ``q [b, n, heads, d]``, ``k, v [b, n, kv_heads, d]`` -> ``[b, n, heads, d]``; query head h uses
  key/value head ``h // group``. The rows of block i attend to the keys of blocks ``0..i`` only,
  so the scores right of the diagonal blocks are never formed: of the ``n^2`` scores, about half
  for many blocks. q, k and v are laid out ``[b, kv_heads, (group,) n, d]`` once, so that both
  products of every block are plain batched matmuls, and k and v are split into their blocks
  (whose gradients concatenate) rather than sliced (whose gradients would be padded to ``n`` and
  summed, once per block). Each block is :func:`layers.heads_first_attention`.
  """
  b, n, heads, d = q.shape
  kv_heads = k.shape[2]
  q = q.reshape(b, n, kv_heads, heads // kv_heads, d).transpose(0, 2, 3, 1, 4)  # [b, kv, g, n, d]
  k, v = k.swapaxes(1, 2), v.swapaxes(1, 2)                                    # [b, kv, n, d]
  q = constrain(q, HEADS_FIRST_Q)          # keep the heads' sharding through the new layout
  k, v = constrain(k, HEADS_FIRST_KV), constrain(v, HEADS_FIRST_KV)
  starts = list(range(block, n, block))
  q_blocks = jnp.split(q, starts, axis=3)
  k_blocks, v_blocks = jnp.split(k, starts, axis=2), jnp.split(v, starts, axis=2)
  rows = []
  for i, q_i in enumerate(q_blocks):
    s, e = i * block, i * block + q_i.shape[3]
    k_i, v_i = (jnp.concatenate(x[:i + 1], axis=2) for x in (k_blocks, v_blocks))  # keys 0..e-1
    visible = np.arange(e) <= np.arange(s, e)[:, None]                          # [e - s, e]
    rows.append(heads_first_attention(q_i, k_i, v_i, visible))
  out = constrain(jnp.concatenate(rows, axis=3), HEADS_FIRST_Q)                # [b, kv, g, n, d]
  return out.transpose(0, 3, 1, 2, 4).reshape(b, n, heads, d)


@scoped("local_attention")
def attend_up_to(q: jax.Array, k: jax.Array, v: jax.Array, positions: jax.Array) -> jax.Array:
  """Plain softmax attention in which the query at position ``p`` of the segment sees keys ``0..p``.

  ``q [b, t, heads, d]`` (queries at ``positions``, ``[t]`` or ``[b, t]``), ``k, v [b, n,
  kv_heads, d]`` (the segment's keys and values from its start) -> ``[b, t, heads, d]``; query
  head h uses key/value head ``h // group``. Scores and softmax in float32. With ``positions =
  0..n-1`` it is the local attention's reference; decoding passes each new token's place.
  """
  b, t = q.shape[:2]
  visible = jnp.arange(k.shape[1]) <= jnp.broadcast_to(positions, (b, t))[..., None]   # [b, t, n]
  return masked_attention(q, k, v, visible)


@scoped("memory_read")
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


class KVCache(NamedTuple):
  """One layer's keys and values of the current segment while decoding, un-rotated.

  ``k, v [b, segment_len, kv_heads, head_dim]``; a sequence's entries from its place in the
  segment on are stale (never attended to, overwritten as tokens arrive).
  """

  k: jax.Array
  v: jax.Array


def write_at(cache: jax.Array, new: jax.Array, pos: jax.Array) -> jax.Array:
  """Each sequence's ``new [b, t, ...]`` into its ``cache [b, n, ...]`` at its own ``pos [b]``."""
  return jax.vmap(lambda c, x, p: jax.lax.dynamic_update_slice_in_dim(c, x, p, axis=0))(
      cache, new, pos)


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
      if cfg.gate == "query":   # beyond the paper: see ModelConfig.gate
        self.gate_u = param(rngs, nnx.initializers.zeros, (h, d), ("heads", "head_dim"))

  @scoped("qkv")
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

  def to_memory(self, x: jax.Array) -> jax.Array:
    """The ``q``, ``k`` or ``v`` the memory reads or writes: as is, or with
    ``memory_gradient="stop"`` (beyond the paper) through ``stop_gradient``."""
    return jax.lax.stop_gradient(x) if self.cfg.memory_gradient == "stop" else x

  def write(self, memory: mem.Memory, k: jax.Array, v: jax.Array,
            write_weight: jax.Array | None) -> mem.Memory:
    """Eq. 8 or 9: ``memory`` with the raw ``k, v [b, n, kv_heads, d]`` written in, each token
    weighted by ``write_weight [b, n]`` (None: ones)."""
    return mem.update(memory, self.to_memory(k), self.to_memory(v), self.cfg.update_rule,
                      write_weight)

  def gate(self, q: jax.Array) -> jax.Array:
    """The weight of the memory read in eq. 10, float32: ``sigmoid(beta) [heads, 1]``, or with
    ``gate="query"`` ``sigmoid(beta + q . u) [b, n, heads, 1]`` for the raw ``q [b, n, heads, d]``."""
    beta = self.beta[...]
    if self.cfg.gate == "query":
      beta = beta + jnp.einsum("bnhd,hd->bnh", q.astype(jnp.float32), self.gate_u[...])
    return jax.nn.sigmoid(beta)[..., None]

  @scoped("gate_and_output")
  def output(self, local: jax.Array, q: jax.Array, memory: mem.Memory | None) -> jax.Array:
    """Gate (eq. 10) the local result with the memory read by the raw ``q``, then W_O (eq. 11).

    ``local [b, n, heads, d]``, ``q [b, n, heads, d]``; memory: the state before this segment's
    write (unused without memory) -> ``[b, n, d_model]``.
    """
    dtype = local.dtype
    if self.cfg.memory == "infini":
      from_memory = retrieve_grouped(memory, self.to_memory(q))
      gate = self.gate(q)                                # [heads, 1] or [b, n, heads, 1]
      if self.cfg.empty_memory_gate == "local_only":   # beyond the paper: see ModelConfig
        filled = ~jnp.repeat(mem.is_empty(memory), self.cfg.group_size, axis=1)   # [b, heads]
        gate = jnp.where(filled[:, None, :, None], gate, 0.0)      # [b, 1 or n, heads, 1]
      local = (gate * from_memory + (1.0 - gate) * local.astype(jnp.float32)).astype(dtype)
    out = jnp.einsum("bnhk,hkd->bnd", local, self.w_o[...].astype(dtype))
    return constrain(out, ("batch", "seq", "embed"))

  def __call__(self, x: jax.Array, memory: mem.Memory | None,
               write_weight: jax.Array | None = None, cache: KVCache | None = None,
               pos: jax.Array | None = None):
    """``x [b, t, d_model]``, memory of the previous segments -> (``[b, t, d_model]``, new memory).

    Training passes no ``cache``: ``x`` is a whole segment (t = segment_len), attended to causally
    and written into the memory, each token weighted by ``write_weight [b, t]`` (None: ones; see
    ``memory.update``; with ``memory="xl"``, tokens of weight 0 are not handed to the next
    segment, while ``local_context="two_segments"`` hands its previous segment on whatever the
    weight). The memory is a ``memory.Memory`` (infini), an ``xl.PrevSegment`` (xl), an
    ``xl.WithPrevious`` (infini with ``local_context="two_segments"``) or None (none).

    Decoding passes the current segment's ``cache`` and ``pos [b]``, the place in the segment of
    ``x``'s first token, and gets ``(out, memory, cache)`` back: ``x`` attends to the cache and to
    itself, and its keys and values join the cache. The memory is written with the whole cached
    segment, weighted by ``write_weight [b, segment_len]`` (required): ones for the sequences whose
    segment ``x`` completes, zeros for the others, so that each segment is written exactly once. A
    whole segment (t = segment_len, ``pos`` 0) replaces the cache and is attended to by the
    training path's kernel.
    """
    cfg = self.cfg
    q, k, v = self.project(x)
    if cfg.memory == "xl":   # decoding refuses xl models (decode.init_state)
      attended, memory = xl.xl_attention(q, k, v, memory, self.rotate, write_weight)
      return self.output(attended, q, None), memory
    if cfg.local_context == "two_segments":   # beyond the paper; decoding refuses it too
      # The previous segment is local context, handed on whatever the write weight: a knock-out
      # empties the compressive memory alone.
      local, prev = xl.xl_attention(q, k, v, memory.prev, self.rotate)
      out = self.output(local, q, memory.memory)
      return out, xl.WithPrevious(self.write(memory.memory, k, v, write_weight), prev)
    if cache is None or x.shape[1] == cfg.segment_len:
      # RoPE on the local path only: the memory reads and writes the un-rotated q, k.
      local = local_attention(self.rotate(q), self.rotate(k), v, cfg.attention_impl)
    else:
      k, v = write_at(cache.k, k, pos), write_at(cache.v, v, pos)
      positions = pos[:, None] + jnp.arange(x.shape[1])                # [b, t]
      local = attend_up_to(self.rotate(q, positions), self.rotate(k), v, positions)
    out = self.output(local, q, memory)                             # reads before the write
    if cfg.memory == "infini":
      def write():
        return self.write(memory, k, v, write_weight)
      # A decoded segment is written once, by the step that completes it: skip all other steps.
      memory = (write() if cache is None
                else jax.lax.cond(jnp.any(write_weight != 0), write, lambda: memory))
    return (out, memory) if cache is None else (out, memory, KVCache(k, v))

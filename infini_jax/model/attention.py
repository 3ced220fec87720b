"""Infini-attention for one segment (eqs. 6-11): local causal attention + compressive memory, gated.

Shapes: ``x [batch, seg, d_model]``; ``q [batch, seg, heads, head_dim]``;
``k, v [batch, seg, kv_heads, head_dim]``; the memory holds one ``(M, z)`` per key/value head.
"""

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from infini_jax import memory as mem
from infini_jax.model.config import ModelConfig
from infini_jax.model import xl
from infini_jax.model.layers import fan_in_init, param, rope
from infini_jax.sharding import constrain, logical_to_spec

# Splash tiles (query and key/value, forward and backward), largest first: the first that divides
# the segment is used. The kernel needs multiples of 128 (one vector register's lanes).
SPLASH_BLOCKS = (512, 256, 128)
Q_AXES = ("batch", "seq", "heads", "head_dim")
KV_AXES = ("batch", "seq", "kv_heads", "head_dim")


def platform() -> str:
  """The platform traced code is compiled for: the active mesh's devices', else the default."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else mesh.abstract_device
  return jax.default_backend() if device is None else device.platform


def resolve_impl(impl: str, segment_len: int, dtype) -> str:
  """``"auto"`` -> splash on TPU, cuDNN flash attention on GPU in 16-bit floats, else XLA.

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
  return "xla"


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


def local_attention(q: jax.Array, k: jax.Array, v: jax.Array, impl: str) -> jax.Array:
  """Causal softmax attention inside the segment (eq. 6), with grouped key/value heads.

  ``q [b, n, heads, d]``, ``k, v [b, n, kv_heads, d]`` -> ``[b, n, heads, d]``. ``impl``: one of
  ``config.ATTENTION_IMPLS`` (see :func:`resolve_impl` for "auto").
  """
  impl = resolve_impl(impl, q.shape[1], q.dtype)
  if impl == "splash":
    return splash_attention(q, k, v)
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

    ``write_weight [b, n]`` (None: ones): each token's weight in the memory write (``memory.update``;
    with ``memory="xl"``, tokens of weight 0 are not handed to the next segment).
    The memory is a ``memory.Memory`` (infini), an ``xl.PrevSegment`` (xl) or None (none).
    """
    cfg = self.cfg
    q, k, v = self.project(x)
    if cfg.memory == "xl":
      attended, memory = xl.xl_attention(q, k, v, memory, self.rotate, write_weight)
      return self.output(attended, q, None), memory
    # RoPE on the local path only: the memory reads and writes the un-rotated q, k.
    local = local_attention(self.rotate(q), self.rotate(k), v, cfg.attention_impl)
    out = self.output(local, q, memory)                             # reads before the write
    if cfg.memory == "infini":
      memory = mem.update(memory, k, v, cfg.update_rule, write_weight)
    return out, memory

"""Building blocks of the decoder: parameters with logical axes, RMSNorm, SwiGLU, embeddings, RoPE."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infini_jax.model.config import ModelConfig
from infini_jax.sharding import constrain


def scoped(name: str):
  """Run the decorated function under ``jax.named_scope(name)``: the model's parts keep their names
  in the compiled program, for profiles (``training/op_profile.py``)."""
  def decorate(fn):
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
      with jax.named_scope(name):
        return fn(*args, **kwargs)
    return wrapped
  return decorate


def param(rngs: nnx.Rngs, init, shape, logical_axes) -> nnx.Param:
  """A float32 parameter whose dimensions are named by ``logical_axes`` (see sharding.py)."""
  if len(shape) != len(logical_axes):
    raise ValueError(f"parameter of shape {shape} needs {len(shape)} logical axes, got {logical_axes}")
  return nnx.Param(init(rngs.params(), shape, jnp.float32), logical_axes=tuple(logical_axes))


def fan_in_init(fan_in_axes: int):
  """Lecun-normal initialiser whose fan-in is the product of the first ``fan_in_axes`` dims."""
  return nnx.initializers.variance_scaling(
      1.0, "fan_in", "truncated_normal", in_axis=tuple(range(fan_in_axes)),
      out_axis=-1)


class RMSNorm(nnx.Module):
  """``x / rms(x) * scale`` over the last axis, computed in float32."""

  def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs):
    self.scale = param(rngs, nnx.initializers.ones, (dim,), ("embed",))
    self.eps = eps

  @scoped("norm")
  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (x32 * self.scale[...]).astype(x.dtype)


class SwiGLU(nnx.Module):
  """``(silu(x W_gate) * x W_up) W_down``; x ``[batch, seq, d_model]``."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    init = fan_in_init(1)
    self.w_gate = param(rngs, init, (cfg.d_model, cfg.mlp_dim), ("embed", "mlp"))
    self.w_up = param(rngs, init, (cfg.d_model, cfg.mlp_dim), ("embed", "mlp"))
    self.w_down = param(rngs, init, (cfg.mlp_dim, cfg.d_model), ("mlp", "embed"))

  @scoped("mlp")
  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = x.dtype
    gate = x @ self.w_gate[...].astype(dtype)
    up = x @ self.w_up[...].astype(dtype)
    hidden = constrain(jax.nn.silu(gate) * up, ("batch", "seq", "mlp"))
    return hidden @ self.w_down[...].astype(dtype)


class Embed(nnx.Module):
  """Token embedding ``[vocab, d_model]``; tied, the model reuses it as the output projection."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    # Tied, the matrix is also the output projection: scale it so initial logits are O(1).
    stddev = cfg.d_model ** -0.5 if cfg.tie_embeddings else 1.0
    self.embedding = param(rngs, nnx.initializers.normal(stddev), (cfg.vocab_size, cfg.d_model),
                           ("vocab", "embed"))

  @scoped("embed")
  def __call__(self, tokens: jax.Array, dtype) -> jax.Array:
    """``tokens [batch, seq]`` int -> ``[batch, seq, d_model]``."""
    return jnp.take(self.embedding[...], tokens, axis=0).astype(dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: tuple | None = None) -> np.ndarray:
  """RoPE's inverse frequencies ``[head_dim / 2]`` (float64 numpy: static config, so the tables of
  static positions are constants of the compiled program), with Llama 3.1's long-context rule if
  ``scaling``.

  ``scaling`` is ``ModelConfig.rope_scaling`` (pairs factor, low_freq_factor, high_freq_factor,
  original_max_position_embeddings): wavelengths longer than ``original / low_freq_factor`` are
  stretched by ``factor``, those shorter than ``original / high_freq_factor`` kept, and the ones in
  between blended linearly in ``original / wavelength``.
  """
  inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
  if scaling is None:
    return inv_freq
  s = dict(scaling)
  factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
  original = s["original_max_position_embeddings"]
  wavelength = 2 * np.pi / inv_freq
  smooth = (original / wavelength - low) / (high - low)
  blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
  return np.where(wavelength < original / high, inv_freq,
                  np.where(wavelength > original / low, inv_freq / factor, blended))


@scoped("rope")
def rope(x: jax.Array, theta: float, positions: jax.Array | np.ndarray | None = None,
         scaling: tuple | None = None) -> jax.Array:
  """Rotary position embedding (rotate-half layout).

  ``x [batch, seq, heads, head_dim]``; ``positions`` ``[seq]`` or ``[batch, seq]`` (default
  0..seq-1 of the segment). Local attention only depends on relative positions, so positions
  restart in every segment without changing the scores; decoding passes a token's place in it.
  ``scaling``: see :func:`rope_inv_freq`.

  Static positions (None or a numpy array) give cos/sin tables computed here in float64 and
  compiled in as constants; traced positions (decoding) compute them in the program. Computed
  in the program, XLA fuses cos and sin into the ``[batch, seq, heads, head_dim]`` product and
  evaluates them batch x heads times over.
  """
  seq, head_dim = x.shape[1], x.shape[3]
  if positions is None:
    positions = np.arange(seq)
  inv_freq = rope_inv_freq(head_dim, theta, scaling)
  if isinstance(positions, np.ndarray):
    lib, angles = np, positions.astype(np.float64)[..., None] * inv_freq
  else:
    lib, angles = jnp, positions.astype(jnp.float32)[..., None] * inv_freq.astype(np.float32)
  angles = lib.concatenate([angles, angles], axis=-1)[..., None, :]    # [(batch,) seq, 1, head_dim]
  cos, sin = lib.cos(angles).astype(np.float32), lib.sin(angles).astype(np.float32)
  x32 = x.astype(jnp.float32)
  half = head_dim // 2
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  return (x32 * cos + rotated * sin).astype(x.dtype)


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, visible: jax.Array) -> jax.Array:
  """Softmax attention with grouped key/value heads under a mask (scores and softmax in float32).

  ``q [b, t, heads, d]``, ``k, v [b, s, kv_heads, d]``, ``visible [b, t, s]`` bool (every query
  sees at least one key) -> ``[b, t, heads, d]``; query head h reads key/value head ``h // G``.
  """
  b, t, heads, d = q.shape
  kv_heads = k.shape[2]
  q = q.reshape(b, t, kv_heads, heads // kv_heads, d).transpose(0, 2, 3, 1, 4)
  out = heads_first_attention(q, k.swapaxes(1, 2), v.swapaxes(1, 2), visible[:, None, None])
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, heads, d)


def heads_first_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          visible: jax.Array | np.ndarray) -> jax.Array:
  """Softmax attention in the heads-first layout, the G query heads of a key/value head grouped.

  ``q [b, kv_heads, G, t, d]``, ``k, v [b, kv_heads, s, d]``, ``visible`` bool, broadcastable to
  ``[b, kv_heads, G, t, s]`` (every query sees at least one key) -> ``[b, kv_heads, G, t, d]``.
  Scores and softmax in float32; the weights are cast back to ``v``'s dtype for the second product.
  """
  scores = jnp.einsum("bkgtd,bksd->bkgts", q, k, preferred_element_type=jnp.float32)
  scores = scores / jnp.sqrt(jnp.float32(q.shape[-1]))
  weights = jax.nn.softmax(jnp.where(visible, scores, -jnp.inf), axis=-1)
  return jnp.einsum("bkgts,bksd->bkgtd", weights.astype(v.dtype), v)

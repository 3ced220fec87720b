"""The compressive memory of Infini-attention as pure functions (arXiv 2404.07143 v2, eqs. 7-9).

Per head, the memory is a matrix ``M`` of shape ``[d_key, d_value]`` and a normaliser ``z`` of shape
``[d_key]``. Queries and keys enter raw (un-activated, un-rotated); ``sigma = ELU + 1`` is applied
here. The state is float32 whatever the compute dtype, because ``z`` grows linearly with the number
of tokens written and ``M`` with it.

Shapes: ``M [batch, heads, d_key, d_value]``, ``z [batch, heads, d_key]``,
``q, k [batch, seq, heads, d_key]``, ``v [batch, seq, heads, d_value]``.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

UPDATE_RULES = ("linear", "delta")

# The memory path is a sum over up to millions of tokens: keep its matmuls at full float32
# precision on accelerators whose default would round the operands to bf16/tf32.
_PRECISION = jax.lax.Precision.HIGHEST


class Memory(NamedTuple):
  """Compressive memory state. ``M [batch, heads, d_key, d_value]``, ``z [batch, heads, d_key]``."""

  M: jax.Array
  z: jax.Array


def sigma(x: jax.Array) -> jax.Array:
  """The non-linearity of eqs. 7-9: ELU(x) + 1, strictly positive."""
  return jax.nn.elu(x) + 1.0


def init_memory(batch: int, heads: int, d_key: int, d_value: int, dtype=jnp.float32) -> Memory:
  """An empty memory: zeros. ``M [batch, heads, d_key, d_value]``, ``z [batch, heads, d_key]``."""
  return Memory(
      M=jnp.zeros((batch, heads, d_key, d_value), dtype),
      z=jnp.zeros((batch, heads, d_key), dtype),
  )


def is_empty(memory: Memory) -> jax.Array:
  """``[batch, heads]`` bool: True where nothing has been written (z == 0; sigma > 0, so any write
  of positive weight makes z positive)."""
  return jnp.all(memory.z == 0, axis=-1)


def _check_shapes(memory: Memory, name: str, x: jax.Array, last_dim: int, what: str) -> None:
  batch, heads, d_key, d_value = memory.M.shape
  if memory.z.shape != (batch, heads, d_key):
    raise ValueError(
        f"memory.z has shape {memory.z.shape} but memory.M {memory.M.shape} needs z of shape "
        f"{(batch, heads, d_key)} [batch, heads, d_key]")
  if x.ndim != 4 or x.shape[0] != batch or x.shape[2] != heads or x.shape[3] != last_dim:
    raise ValueError(
        f"{name} has shape {x.shape}; expected [batch={batch}, seq, heads={heads}, {what}={last_dim}] "
        f"to match the memory M {memory.M.shape}")


def _read(memory: Memory, sigma_q: jax.Array) -> jax.Array:
  """Eq. 7 for already-activated queries: sigma(q) M / (sigma(q) z), zero where the memory is empty.

  Since sigma > 0, the denominator is zero exactly when z is (an empty memory); there the read is
  defined as zero. Both branches of the ``where`` stay finite so no NaN reaches the gradient.
  """
  numerator = jnp.einsum("bshk,bhkv->bshv", sigma_q, memory.M, precision=_PRECISION)
  denominator = jnp.einsum("bshk,bhk->bsh", sigma_q, memory.z, precision=_PRECISION)[..., None]
  empty = denominator == 0
  return jnp.where(empty, 0.0, numerator / jnp.where(empty, 1.0, denominator))


def retrieve(memory: Memory, q: jax.Array) -> jax.Array:
  """Memory read (eq. 7). ``q [batch, seq, heads, d_key]`` raw -> ``[batch, seq, heads, d_value]`` f32."""
  _check_shapes(memory, "q", q, memory.M.shape[2], "d_key")
  with jax.named_scope("memory_read"):
    return _read(memory, sigma(q.astype(jnp.float32)))


def update(memory: Memory, k: jax.Array, v: jax.Array, rule: str = "linear",
           weight: jax.Array | None = None) -> Memory:
  """Memory write: eq. 8 (``rule="linear"``) or eq. 9 (``"delta"``); z as in eq. 8 for both.

  ``k [batch, seq, heads, d_key]`` and ``v [batch, seq, heads, d_value]`` raw projections; the
  returned memory is float32. ``weight [batch, seq]`` (None: ones) scales each token's term of
  both sums: with the linear rule, weight w writes a token exactly as w copies of it would.
  """
  if rule not in UPDATE_RULES:
    raise ValueError(f"unknown memory update rule {rule!r}; use one of {UPDATE_RULES}")
  _check_shapes(memory, "k", k, memory.M.shape[2], "d_key")
  _check_shapes(memory, "v", v, memory.M.shape[3], "d_value")
  if k.shape[1] != v.shape[1]:
    raise ValueError(f"k has {k.shape[1]} positions but v has {v.shape[1]}; they must match")
  if weight is not None and weight.shape != k.shape[:2]:
    raise ValueError(f"weight has shape {weight.shape}; expected [batch, seq] = {k.shape[:2]}")
  with jax.named_scope("memory_write"):
    sigma_k = sigma(k.astype(jnp.float32))
    v = v.astype(jnp.float32)
    if rule == "delta":
      v = v - _read(memory, sigma_k)  # write only what the memory does not already return
    if weight is not None:
      sigma_k = sigma_k * weight.astype(jnp.float32)[:, :, None, None]
    M = memory.M + jnp.einsum("bshk,bshv->bhkv", sigma_k, v, precision=_PRECISION)
    z = memory.z + jnp.sum(sigma_k, axis=1)
    return Memory(M=M, z=z)

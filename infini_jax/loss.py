"""Cross-entropy sums from final hidden states, optionally in chunks that never hold the whole logits.

A segment's loss needs ``log Z = logsumexp(h W)`` over the vocabulary for every token. Computed at
once, the float32 logits ``[batch, seq, vocab]`` are the largest temporaries of a big-vocabulary
model (8 GiB a segment at batch 8 x 2048 with a 128K vocabulary), and autodiff keeps them, or their
softmax, for the backward pass. ``cross_entropy_sums(..., chunk=c)`` walks the sequence ``c``
positions at a time with a ``jax.lax.scan`` and a custom VJP whose backward pass recomputes each
chunk's logits, so neither pass holds more than ``[batch, c, vocab]`` (the idea of MaxText's
vocabulary tiling and of "cut cross-entropy", Wijmans et al. 2024). Chunks run along the sequence,
not the flattened tokens, so every chunk keeps the whole batch and its sharding.
"""

import functools

import jax
import jax.numpy as jnp

from infini_jax.sharding import constrain


def logits(h: jax.Array, w: jax.Array) -> jax.Array:
  """``h [..., d_model]`` (compute dtype) x ``w [d_model, vocab]`` -> float32 ``[..., vocab]``."""
  return jnp.einsum("...d,dv->...v", h, w.astype(h.dtype), preferred_element_type=jnp.float32)


def sums_from_logits(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> dict:
  """Masked sums of the NLL, of ``log Z^2`` (z-loss) and of the mask, from whole logits.

  ``logits [batch, seq, vocab]`` float32, ``targets [batch, seq]`` int, ``mask [batch, seq]``.
  """
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return {"nll": jnp.sum((log_z - target_logit) * mask), "z": jnp.sum(log_z ** 2 * mask),
          "weight": jnp.sum(mask)}


def check_chunk(chunk: int, seq: int) -> None:
  """Raises unless ``chunk`` is 0 (no chunking) or a positive divisor of ``seq``."""
  if chunk < 0 or (chunk and seq % chunk):
    raise ValueError(f"loss chunk {chunk} does not divide the segment length {seq}; set "
                     f"train.loss_chunk to a divisor of SEGMENT_LEN (0: the whole segment at once)")


def cross_entropy_sums(h: jax.Array, w: jax.Array, targets: jax.Array, mask: jax.Array,
                       chunk: int = 0) -> dict:
  """``sums_from_logits(logits(h, w), targets, mask)``, ``chunk`` positions at a time.

  Args:
    h: final hidden states ``[batch, seq, d_model]`` (compute dtype).
    w: the unembedding ``[d_model, vocab]`` (float32; tied models pass the embedding transposed).
    targets: ``[batch, seq]`` int token ids.
    mask: ``[batch, seq]`` float loss weights.
    chunk: sequence positions per chunk, a divisor of ``seq``; 0 (or ``seq``): all at once.

  Returns:
    ``{"nll", "z", "weight"}`` scalars: sums of ``(log Z - logit of target) * mask``,
    ``log Z^2 * mask`` and ``mask``. Gradients reach ``h``, ``w`` and ``mask``.
  """
  seq = h.shape[1]
  check_chunk(chunk, seq)
  if chunk in (0, seq):
    return sums_from_logits(logits(h, w), targets, mask)
  nll, z = _chunked_sums(chunk, h, w, targets, mask)
  return {"nll": nll, "z": z, "weight": jnp.sum(mask)}


def _slice(x: jax.Array, index: jax.Array, chunk: int) -> jax.Array:
  return jax.lax.dynamic_slice_in_dim(x, index * chunk, chunk, axis=1)


def _chunk_logits(h, w, index, chunk):
  return constrain(logits(_slice(h, index, chunk), w), ("batch", "seq", "vocab"))


def _unchunk(x: jax.Array) -> jax.Array:
  """Per-chunk ``[chunks, batch, chunk]`` -> ``[batch, chunks * chunk]``."""
  return jnp.moveaxis(x, 0, 1).reshape(x.shape[1], -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked_sums(chunk, h, w, targets, mask):
  """(sum of NLL * mask, sum of log Z^2 * mask), one chunk of logits at a time."""
  return _chunked_forward(chunk, h, w, targets, mask)[0]


def _chunked_forward(chunk, h, w, targets, mask):
  def one(sums, index):
    lg = _chunk_logits(h, w, index, chunk)                                # [b, chunk, vocab]
    log_z = jax.nn.logsumexp(lg, axis=-1)
    target_logit = jnp.take_along_axis(lg, _slice(targets, index, chunk)[..., None], -1)[..., 0]
    m = _slice(mask, index, chunk)
    nll, z = sums
    return (nll + jnp.sum((log_z - target_logit) * m), z + jnp.sum(log_z ** 2 * m)), \
        (log_z, target_logit)

  zero = jnp.zeros((), jnp.float32)
  sums, (log_z, target_logit) = jax.lax.scan(one, (zero, zero), jnp.arange(h.shape[1] // chunk))
  return sums, (h, w, targets, mask, log_z, target_logit)   # log_z, target_logit [chunks, b, chunk]


def _chunked_backward(chunk, residuals, cotangents):
  h, w, targets, mask, log_z, target_logit = residuals
  g_nll, g_z = cotangents
  vocab = w.shape[1]

  def one(grads, index):
    dh, dw = grads
    lg = _chunk_logits(h, w, index, chunk)
    m = _slice(mask, index, chunk)
    softmax = jnp.exp(lg - log_z[index][..., None])
    # d(log Z)/d logits = softmax; d(logit of target)/d logits = its one-hot.
    d_logits = softmax * (m * (g_nll + 2.0 * g_z * log_z[index]))[..., None]
    d_logits -= jax.nn.one_hot(_slice(targets, index, chunk), vocab) * (m * g_nll)[..., None]
    dh_chunk = jnp.einsum("bcv,dv->bcd", d_logits, w.astype(h.dtype),
                          preferred_element_type=jnp.float32).astype(h.dtype)
    dh = jax.lax.dynamic_update_slice_in_dim(dh, dh_chunk, index * chunk, axis=1)
    dw += jnp.einsum("bcd,bcv->dv", _slice(h, index, chunk), d_logits,
                     preferred_element_type=jnp.float32)
    return (dh, dw), None

  zeros = (constrain(jnp.zeros_like(h), ("batch", "seq", "embed")), jnp.zeros(w.shape, jnp.float32))
  (dh, dw), _ = jax.lax.scan(one, zeros, jnp.arange(h.shape[1] // chunk))
  d_mask = g_nll * _unchunk(log_z - target_logit) + g_z * _unchunk(log_z ** 2)
  return dh, dw.astype(w.dtype), None, d_mask.astype(mask.dtype)


_chunked_sums.defvjp(_chunked_forward, _chunked_backward)

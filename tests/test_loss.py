"""The chunked cross-entropy: sums and gradients against the equations in numpy, and its memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infini_jax import loss

B, T, D, V = 3, 16, 8, 50
G_NLL, G_Z, G_WEIGHT = 1.0, 0.3, 0.1   # the objective: nll + 0.3 z + 0.1 weight


def inputs(seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  h = np.asarray(jax.random.normal(k[0], (B, T, D)))
  w = np.asarray(jax.random.normal(k[1], (D, V))) * 0.5
  targets = np.asarray(jax.random.randint(k[2], (B, T), 0, V))
  mask = (np.asarray(jax.random.uniform(k[3], (B, T))) > 0.3).astype(np.float32)
  return h, w, targets, mask


def numpy_reference(h, w, targets, mask):
  """Sums and the objective's gradients, written out: d log Z / d logits = softmax,
  d (logit of target) / d logits = one-hot."""
  h, w = h.astype(np.float64), w.astype(np.float64)
  logits = h @ w
  top = logits.max(-1, keepdims=True)
  log_z = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
  softmax = np.exp(logits - log_z[..., None])
  one_hot = np.eye(V)[targets]
  nll = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  sums = {"nll": (nll * mask).sum(), "z": (log_z ** 2 * mask).sum(), "weight": mask.sum()}
  d_logits = mask[..., None] * (G_NLL * (softmax - one_hot) + G_Z * 2 * log_z[..., None] * softmax)
  grads = (d_logits @ w.T, np.einsum("btd,btv->dv", h, d_logits),
           G_NLL * nll + G_Z * log_z ** 2 + G_WEIGHT)
  return sums, grads


def sums_and_grads(h, w, targets, mask, chunk):
  def objective(h, w, mask):
    sums = loss.cross_entropy_sums(h, w, targets, mask, chunk)
    return G_NLL * sums["nll"] + G_Z * sums["z"] + G_WEIGHT * sums["weight"], sums
  return jax.jit(jax.grad(objective, argnums=(0, 1, 2), has_aux=True))(h, w, mask)


@pytest.mark.parametrize("chunk", [0, 2, 4, 16])
def test_sums_and_gradients_match_the_equations(chunk):
  h, w, targets, mask = inputs()
  (dh, dw, d_mask), sums = sums_and_grads(h, w, targets, mask, chunk)
  want_sums, (want_dh, want_dw, want_d_mask) = numpy_reference(h, w, targets, mask)
  for key in ("nll", "z", "weight"):
    np.testing.assert_allclose(sums[key], want_sums[key], rtol=1e-6)
  np.testing.assert_allclose(dh, want_dh, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, want_dw, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(d_mask, want_d_mask, rtol=1e-5, atol=1e-5)


def test_bfloat16_hidden_states_chunked_equal_whole():
  h, w, targets, mask = inputs(seed=1)
  h = jnp.asarray(h, jnp.bfloat16)
  (dh0, dw0, _), sums0 = sums_and_grads(h, w, targets, mask, 0)
  (dh4, dw4, _), sums4 = sums_and_grads(h, w, targets, mask, 4)
  assert dh4.dtype == jnp.bfloat16 and dw4.dtype == jnp.float32
  np.testing.assert_allclose(sums4["nll"], sums0["nll"], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(dh4, np.float32), np.asarray(dh0, np.float32), rtol=1e-2,
                             atol=1e-2)
  np.testing.assert_allclose(dw4, dw0, rtol=1e-2, atol=1e-2)


def test_chunk_must_divide_the_segment():
  h, w, targets, mask = inputs()
  with pytest.raises(ValueError, match="loss chunk 5 does not divide the segment length 16"):
    loss.cross_entropy_sums(h, w, targets, mask, 5)


def test_chunked_loss_needs_less_temporary_memory():
  # vocab 8192, 4 x 256 positions: whole float32 logits are 32 MiB, a chunk of 32 positions 4 MiB.
  b, t, d, v = 4, 256, 64, 8192
  args = (jax.ShapeDtypeStruct((b, t, d), jnp.float32), jax.ShapeDtypeStruct((d, v), jnp.float32),
          jax.ShapeDtypeStruct((b, t), jnp.int32), jax.ShapeDtypeStruct((b, t), jnp.float32))

  def temp_bytes(chunk):
    def objective(h, w, targets, mask):
      return loss.cross_entropy_sums(h, w, targets, mask, chunk)["nll"]
    grad = jax.jit(jax.grad(objective, argnums=(0, 1)))
    return grad.lower(*args).compile().memory_analysis().temp_size_in_bytes

  whole, chunked = temp_bytes(0), temp_bytes(32)
  logits_bytes = b * t * v * 4
  print(f"temporaries: whole {whole / 2**20:.1f} MiB, chunk 32: {chunked / 2**20:.1f} MiB")
  assert whole >= logits_bytes   # autodiff keeps the logits (or their softmax) for the backward
  # Measured 64 and 8 MiB: a chunk's logits and their cotangent, 2 x 4 MiB, with no whole copy.
  assert chunked < logits_bytes / 2 and chunked < whole / 4

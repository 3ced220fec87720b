"""infini_jax.memory against eqs. 7-9 written out in float64 numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infini_jax import memory as mem

B, H, DK, DV, N = 2, 3, 8, 5, 7


def np_sigma(x):
  return np.where(x > 0, x + 1.0, np.exp(x))  # ELU(x) + 1


def np_read(M, z, sq):
  """Eq. 7 for one batch element and head: sigma(q) M / (sigma(q) z); zero on an empty memory."""
  den = sq @ z
  return np.zeros((sq.shape[0], M.shape[1])) if np.all(z == 0) else (sq @ M) / den[:, None]


def np_segments(qs, ks, vs, rule, M=None, z=None):
  """Reads and final state over segments, from (M, z) (None: empty); qs/ks/vs lists of
  [batch, seq, H, D] arrays (a q of None: no read)."""
  batch = ks[0].shape[0]
  M = np.zeros((batch, H, DK, DV)) if M is None else M
  z = np.zeros((batch, H, DK)) if z is None else z
  reads = []
  for q, k, v in zip(qs, ks, vs):
    if q is not None:
      read = np.zeros(q.shape[:3] + (DV,))
      for b in range(batch):
        for h in range(H):
          read[b, :, h] = np_read(M[b, h], z[b, h], np_sigma(q[b, :, h]))
      reads.append(read)
    newM, newz = M.copy(), z.copy()
    for b in range(batch):
      for h in range(H):
        sk, vv = np_sigma(k[b, :, h]), v[b, :, h]
        if rule == "delta":
          vv = vv - np_read(M[b, h], z[b, h], sk)
        newM[b, h] = M[b, h] + sk.T @ vv
        newz[b, h] = z[b, h] + sk.sum(0)
    M, z = newM, newz
  return reads, M, z


@pytest.mark.parametrize("rule", ["linear", "delta"])
def test_matches_numpy_over_segments(rule):
  rng = np.random.default_rng(0)
  segs = 4
  qs = [rng.normal(size=(B, N, H, DK)) for _ in range(segs)]
  ks = [rng.normal(size=(B, N, H, DK)) for _ in range(segs)]
  vs = [rng.normal(size=(B, N, H, DV)) for _ in range(segs)]
  want_reads, want_M, want_z = np_segments(qs, ks, vs, rule)

  state = mem.init_memory(B, H, DK, DV)
  for i in range(segs):
    read = mem.retrieve(state, jnp.asarray(qs[i], jnp.float32))
    np.testing.assert_allclose(read, want_reads[i], rtol=1e-4, atol=1e-5)
    state = mem.update(state, jnp.asarray(ks[i], jnp.float32), jnp.asarray(vs[i], jnp.float32), rule)
  assert state.M.dtype == jnp.float32 and state.z.dtype == jnp.float32
  np.testing.assert_allclose(state.M, want_M, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(state.z, want_z, rtol=1e-5)


def test_linear_and_delta_differ_after_first_segment():
  # The delta rule subtracts nothing from an empty memory, so the first writes agree; later ones not.
  rng = np.random.default_rng(1)
  k = [jnp.asarray(rng.normal(size=(B, N, H, DK)), jnp.float32) for _ in range(2)]
  v = [jnp.asarray(rng.normal(size=(B, N, H, DV)), jnp.float32) for _ in range(2)]
  lin = mem.update(mem.init_memory(B, H, DK, DV), k[0], v[0], "linear")
  dlt = mem.update(mem.init_memory(B, H, DK, DV), k[0], v[0], "delta")
  np.testing.assert_array_equal(lin.M, dlt.M)
  lin, dlt = mem.update(lin, k[1], v[1], "linear"), mem.update(dlt, k[1], v[1], "delta")
  assert float(jnp.abs(lin.M - dlt.M).max()) > 1e-3


def test_linear_write_weight_counts_a_token_that_many_times():
  # Weight w on a token = the same token written w times: compare with an unweighted write of
  # the tokens repeated, one batch row at a time (rows repeat their tokens differently).
  rng = np.random.default_rng(2)
  M0, z0 = rng.normal(size=(1, H, DK, DV)), rng.uniform(1, 2, size=(1, H, DK))
  k, v = rng.normal(size=(B, N, H, DK)), rng.normal(size=(B, N, H, DV))
  w = rng.integers(0, 4, size=(B, N))
  start = mem.Memory(jnp.asarray(np.repeat(M0, B, 0), jnp.float32),
                     jnp.asarray(np.repeat(z0, B, 0), jnp.float32))
  weighted = mem.update(start, jnp.asarray(k, jnp.float32), jnp.asarray(v, jnp.float32),
                        "linear", jnp.asarray(w, jnp.float32))
  for b in range(B):
    _, want_M, want_z = np_segments([None], [np.repeat(k[b:b + 1], w[b], 1)],
                                    [np.repeat(v[b:b + 1], w[b], 1)], "linear", M0, z0)
    np.testing.assert_allclose(weighted.M[b], want_M[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(weighted.z[b], want_z[0], rtol=1e-5)


def test_delta_write_weight_scales_each_tokens_correction():
  # Eq. 9 with weights: M + sum_t w_t sigma(k_t)^T (v_t - sigma(k_t) M / sigma(k_t) z).
  rng = np.random.default_rng(3)
  M, z = rng.normal(size=(B, H, DK, DV)), rng.uniform(1, 2, size=(B, H, DK))
  k, v = rng.normal(size=(B, N, H, DK)), rng.normal(size=(B, N, H, DV))
  w = rng.uniform(0, 5, size=(B, N))
  got = mem.update(mem.Memory(jnp.asarray(M, jnp.float32), jnp.asarray(z, jnp.float32)),
                   jnp.asarray(k, jnp.float32), jnp.asarray(v, jnp.float32), "delta",
                   jnp.asarray(w, jnp.float32))
  for b in range(B):
    for h in range(H):
      sk = np_sigma(k[b, :, h])
      correction = v[b, :, h] - np_read(M[b, h], z[b, h], sk)
      np.testing.assert_allclose(got.M[b, h], M[b, h] + (w[b, :, None] * sk).T @ correction,
                                 rtol=1e-4, atol=1e-4)
      np.testing.assert_allclose(got.z[b, h], z[b, h] + w[b] @ sk, rtol=1e-5)


@pytest.mark.parametrize("rule", ["linear", "delta"])
def test_empty_memory_reads_zero_without_nan_in_value_or_gradient(rule):
  state = mem.init_memory(B, H, DK, DV)
  q = jnp.ones((B, N, H, DK))
  read = mem.retrieve(state, q)
  assert read.shape == (B, N, H, DV)
  np.testing.assert_array_equal(read, 0.0)

  def loss(M, z, q, k, v):
    new = mem.update(mem.Memory(M, z), k, v, rule)
    return mem.retrieve(mem.Memory(M, z), q).sum() + new.M.sum() + mem.retrieve(new, q).sum()

  grads = jax.grad(loss, argnums=(0, 1, 2, 3, 4))(state.M, state.z, q, q, jnp.ones((B, N, H, DV)))
  for g in grads:
    assert bool(jnp.all(jnp.isfinite(g)))


def test_init_memory_shapes_and_dtype():
  state = mem.init_memory(B, H, DK, DV)
  assert state.M.shape == (B, H, DK, DV) and state.z.shape == (B, H, DK)
  assert state.M.dtype == jnp.float32 and not bool(state.M.any())


def test_bf16_inputs_keep_float32_state():
  state = mem.init_memory(B, H, DK, DV)
  k = jnp.ones((B, N, H, DK), jnp.bfloat16)
  state = mem.update(state, k, jnp.ones((B, N, H, DV), jnp.bfloat16), "delta")
  assert state.M.dtype == jnp.float32 and state.z.dtype == jnp.float32
  assert mem.retrieve(state, k).dtype == jnp.float32


def test_errors_name_the_problem():
  state = mem.init_memory(B, H, DK, DV)
  k = jnp.ones((B, N, H, DK))
  v = jnp.ones((B, N, H, DV))
  with pytest.raises(ValueError, match="unknown memory update rule 'hebbian'"):
    mem.update(state, k, v, rule="hebbian")
  with pytest.raises(ValueError, match="q has shape"):
    mem.retrieve(state, jnp.ones((B, N, H + 1, DK)))
  with pytest.raises(ValueError, match="v has shape"):
    mem.update(state, k, jnp.ones((B, N, H, DV + 1)))
  with pytest.raises(ValueError, match=r"weight has shape \(2, 6\); expected \[batch, seq\]"):
    mem.update(state, k, v, weight=jnp.ones((B, N - 1)))
  with pytest.raises(ValueError, match="positions"):
    mem.update(state, k, jnp.ones((B, N + 1, H, DV)))
  with pytest.raises(ValueError, match="memory.z has shape"):
    mem.retrieve(mem.Memory(state.M, jnp.zeros((B, H, DK + 1))), k)

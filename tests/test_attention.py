"""InfiniAttention against a float64 numpy implementation of eqs. 6-11 with GQA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from infini_jax.model import ModelConfig
from infini_jax.model.attention import InfiniAttention, local_attention
from infini_jax.memory import init_memory


def np_rope(x, theta):
  """Rotate-half RoPE at positions 0..n-1; x [n, d]."""
  n, d = x.shape
  inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
  ang = np.arange(n)[:, None] * inv[None]
  cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
  rot = np.concatenate([-x[:, d // 2:], x[:, :d // 2]], -1)
  return x * cos + rot * sin


def np_sigma(x):
  return np.where(x > 0, x + 1.0, np.exp(x))


def np_layer(x_segments, wq, wk, wv, wo, beta, rule, theta):
  """Per head h, kv head h // G: local softmax with RoPE + memory read/write without PE, gated."""
  d_model, heads, d = wq.shape
  kv_heads = wk.shape[1]
  group = heads // kv_heads
  M = np.zeros((kv_heads, d, d))
  z = np.zeros((kv_heads, d))
  outs = []
  for x in x_segments:                       # x [n, d_model], one batch element
    n = x.shape[0]
    q = np.einsum("nd,dhk->nhk", x, wq)
    k = np.einsum("nd,dhk->nhk", x, wk)
    v = np.einsum("nd,dhk->nhk", x, wv)
    heads_out = np.zeros((n, heads, d))
    for h in range(heads):
      j = h // group
      qr, kr = np_rope(q[:, h], theta), np_rope(k[:, j], theta)
      s = qr @ kr.T / np.sqrt(d)
      s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
      p = np.exp(s - s.max(-1, keepdims=True))
      local = (p / p.sum(-1, keepdims=True)) @ v[:, j]
      sq = np_sigma(q[:, h])
      read = np.zeros((n, d)) if not z[j].any() else (sq @ M[j]) / (sq @ z[j])[:, None]
      g = 1 / (1 + np.exp(-beta[h]))
      heads_out[:, h] = g * read + (1 - g) * local
    for j in range(kv_heads):
      sk, vv = np_sigma(k[:, j]), v[:, j]
      if rule == "delta" and z[j].any():
        vv = vv - (sk @ M[j]) / (sk @ z[j])[:, None]
      M[j] = M[j] + sk.T @ vv
      z[j] = z[j] + sk.sum(0)
    outs.append(np.einsum("nhk,hkd->nd", heads_out, wo))
  return outs


@pytest.mark.parametrize("rule", ["linear", "delta"])
def test_layer_matches_numpy_over_segments(rule):
  cfg = ModelConfig(d_model=32, num_heads=4, num_kv_heads=2, head_dim=8, segment_len=6,
                    update_rule=rule, attention_impl="reference")
  layer = InfiniAttention(cfg, rngs=nnx.Rngs(3))
  beta = np.array([-2.0, -0.5, 0.7, 2.5])           # distinct per head, so a wrong mapping shows
  layer.beta[...] = jnp.asarray(beta, jnp.float32)
  rng = np.random.default_rng(0)
  xs = [rng.normal(size=(2, 6, 32)) for _ in range(3)]
  params = [np.asarray(w[...], np.float64) for w in (layer.w_q, layer.w_k, layer.w_v, layer.w_o)]

  state = init_memory(2, 2, 8, 8)
  got = []
  for x in xs:
    out, state = layer(jnp.asarray(x, jnp.float32), state)
    got.append(out)
  for b in range(2):
    want = np_layer([x[b] for x in xs], *params, beta, rule, cfg.rope_theta)
    for s in range(3):
      np.testing.assert_allclose(got[s][b], want[s], rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("impl", ["xla"])
def test_local_attention_impls_match_reference(impl):
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.normal(size=(2, 16, 4, 8)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(2, 16, 2, 8)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(2, 16, 2, 8)), jnp.float32)
  np.testing.assert_allclose(local_attention(q, k, v, impl), local_attention(q, k, v, "reference"),
                             rtol=1e-5, atol=1e-5)


def test_cudnn_is_selectable_where_a_gpu_exists():
  if jax.default_backend() != "gpu":
    q = jnp.ones((1, 8, 2, 8), jnp.bfloat16)
    with pytest.raises(Exception):
      local_attention(q, q, q, "cudnn")
  else:
    rng = np.random.default_rng(2)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 128, 4, 64)), jnp.bfloat16) for _ in range(3))
    np.testing.assert_allclose(np.asarray(local_attention(q, k, v, "cudnn"), np.float32),
                               np.asarray(local_attention(q, k, v, "reference"), np.float32),
                               atol=3e-2)

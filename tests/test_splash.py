"""attention_impl="splash": the Pallas splash-attention kernel, run on CPU in Pallas' interpreter.

The same kernel is compiled for a TPU in tests/test_tpu_compile.py (there "auto" picks it).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infini_jax.model.attention import local_attention, resolve_impl

import fake_devices

def numpy_causal_attention(q, k, v):
  """Eq. 6 written out: softmax(q k^T / sqrt(d)) v over the causal past, key/value head h // G."""
  b, n, heads, d = q.shape
  group = heads // k.shape[2]
  out = np.zeros_like(q, dtype=np.float64)
  for h in range(heads):
    scores = np.einsum("bqd,bkd->bqk", q[:, :, h], k[:, :, h // group]) / np.sqrt(d)
    scores = np.where(np.tril(np.ones((n, n), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    out[:, :, h] = np.einsum("bqk,bkd->bqd", weights / weights.sum(-1, keepdims=True),
                             v[:, :, h // group])
  return out

def qkv(n, heads=4, kv_heads=2, d=16, batch=1, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(rng.normal(size=(batch, n, h, d)).astype(np.float32)
               for h in (heads, kv_heads, kv_heads))

def test_splash_matches_causal_softmax_with_grouped_heads():
  q, k, v = qkv(384)                      # 3 tiles of 128: the causal mask crosses tile borders
  got = local_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), "splash")
  np.testing.assert_allclose(np.asarray(got), numpy_causal_attention(q, k, v), atol=2e-5)

def test_splash_gradients_match_the_reference():
  q, k, v = map(jnp.asarray, qkv(256, seed=1))
  probe = jnp.asarray(np.random.default_rng(2).normal(size=q.shape), jnp.float32)

  def grads(impl):
    return jax.grad(lambda *x: jnp.sum(local_attention(*x, impl) * probe), argnums=(0, 1, 2))(
        q, k, v)

  for got, want in zip(grads("splash"), grads("reference")):
    np.testing.assert_allclose(got, want, atol=5e-5)

def test_splash_needs_a_segment_in_tiles_of_128():
  q, k, v = map(jnp.asarray, qkv(96))
  with pytest.raises(ValueError, match="segment_len 96 is not a multiple of 128"):
    local_attention(q, k, v, "splash")

def test_auto_is_blocked_on_cpu():
  assert jax.default_backend() == "cpu"
  assert resolve_impl("auto", 2048, jnp.bfloat16) == "blocked"
  assert resolve_impl("splash", 2048, jnp.bfloat16) == "splash"

SHARDED = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from infini_jax import sharding
from infini_jax.model.attention import local_attention

q, k, v = (jnp.asarray(np.random.default_rng(3).normal(size=(4, 128, h, 8)), jnp.float32)
           for h in (4, 2, 2))
rules = sharding.DEFAULT_RULES
mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)     # batch over data x fsdp, heads over tensor
with sharding.activate(mesh, rules):
  put = lambda x, names: jax.device_put(x, sharding.named_sharding(mesh, x.shape, names, rules, "x"))
  q = put(q, ("batch", "seq", "heads", "head_dim"))
  k, v = (put(x, ("batch", "seq", "kv_heads", "head_dim")) for x in (k, v))
  out = jax.jit(lambda q, k, v: local_attention(q, k, v, "splash"))(q, k, v)
  hlo = jax.jit(lambda q, k, v: local_attention(q, k, v, "splash")).lower(q, k, v).as_text()
want = local_attention(*(np.asarray(x) for x in (q, k, v)), "reference")
print("RESULT " + json.dumps({"err": float(jnp.max(jnp.abs(out - want))),
                              "spec_ok": out.sharding.spec[:3] == (("data", "fsdp"), None, "tensor"),
                              "per_shard": "manual_computation" in hlo or "FullToShard" in hlo}))
"""

def test_splash_runs_per_shard_on_a_mesh():
  out = fake_devices.run(SHARDED, timeout=300)
  assert out["err"] < 2e-5, out
  assert out["per_shard"] and out["spec_ok"], out

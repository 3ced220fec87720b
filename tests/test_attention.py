"""InfiniAttention against a float64 numpy implementation of eqs. 6-11 with GQA."""

import functools
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from infini_jax.errors import UserError
from infini_jax.model import ModelConfig
from infini_jax.model import xl
from infini_jax.model.attention import InfiniAttention, KVCache, blocked_attention, local_attention
from infini_jax.memory import init_memory, is_empty


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


def np_layer(x_segments, wq, wk, wv, wo, beta, rule, theta, empty_memory_gate="paper", u=None,
             previous=0):
  """Per head h, kv head h // G: local softmax with RoPE + memory read/write without PE, gated.

  empty_memory_gate="local_only": a head whose memory is still empty (z = 0) gives its local
  result alone (gate 0). ``u [heads, d]`` (gate="query"): token t's gate is
  sigmoid(beta[h] + q[t, h] . u[h]) with the raw query. ``previous`` = m > 0 (local_context=
  "two_segments"): the local softmax also sees the previous segment's last m keys and values (none
  for the first segment), RoPE over both at 0..m+n-1 with the queries at m..m+n-1."""
  d_model, heads, d = wq.shape
  kv_heads = wk.shape[1]
  group = heads // kv_heads
  M = np.zeros((kv_heads, d, d))
  z = np.zeros((kv_heads, d))
  outs = []
  prev_k = prev_v = None
  for x in x_segments:                       # x [n, d_model], one batch element
    n = x.shape[0]
    q = np.einsum("nd,dhk->nhk", x, wq)
    k = np.einsum("nd,dhk->nhk", x, wk)
    v = np.einsum("nd,dhk->nhk", x, wv)
    heads_out = np.zeros((n, heads, d))
    for h in range(heads):
      j = h // group
      if previous and prev_k is not None:
        keys = np.concatenate([prev_k[-previous:, j], k[:, j]])
        values = np.concatenate([prev_v[-previous:, j], v[:, j]])
        qr = np_rope(np.concatenate([np.zeros((previous, d)), q[:, h]]), theta)[previous:]
        visible = np.concatenate([np.ones((n, previous), bool), np.tril(np.ones((n, n), bool))], 1)
      else:
        keys, values, qr = k[:, j], v[:, j], np_rope(q[:, h], theta)
        visible = np.tril(np.ones((n, n), bool))
      kr = np_rope(keys, theta)
      s = qr @ kr.T / np.sqrt(d)
      s = np.where(visible, s, -np.inf)
      p = np.exp(s - s.max(-1, keepdims=True))
      local = (p / p.sum(-1, keepdims=True)) @ values
      sq = np_sigma(q[:, h])
      read = np.zeros((n, d)) if not z[j].any() else (sq @ M[j]) / (sq @ z[j])[:, None]
      logit = beta[h] if u is None else beta[h] + (q[:, h] @ u[h])[:, None]   # scalar or [n, 1]
      g = 1 / (1 + np.exp(-logit))
      if empty_memory_gate == "local_only" and not z[j].any():
        g = 0.0
      heads_out[:, h] = g * read + (1 - g) * local
    for j in range(kv_heads):
      sk, vv = np_sigma(k[:, j]), v[:, j]
      if rule == "delta" and z[j].any():
        vv = vv - (sk @ M[j]) / (sk @ z[j])[:, None]
      M[j] = M[j] + sk.T @ vv
      z[j] = z[j] + sk.sum(0)
    prev_k, prev_v = k, v
    outs.append(np.einsum("nhk,hkd->nd", heads_out, wo))
  return outs


BETA = np.array([-2.0, -0.5, 0.7, 2.5])   # distinct per head, so a wrong mapping shows


def small_layer(seed, **changes):
  """A 4-head layer (2 kv heads of 8, segments of 6) with the gates BETA, three segments of input
  for 2 rows, its weights in float64 and a compiled call: (cfg, layer, xs, weights, call)."""
  cfg = ModelConfig(d_model=32, num_heads=4, num_kv_heads=2, head_dim=8, segment_len=6,
                    attention_impl="reference", **changes)
  layer = InfiniAttention(cfg, rngs=nnx.Rngs(3))
  layer.beta[...] = jnp.asarray(BETA, jnp.float32)
  rng = np.random.default_rng(seed)
  xs = [rng.normal(size=(2, 6, 32)).astype(np.float32) for _ in range(3)]
  weights = [np.asarray(w[...], np.float64) for w in (layer.w_q, layer.w_k, layer.w_v, layer.w_o)]
  call = nnx.jit(lambda layer, *args: layer(*args))   # numpy in, compiled: eager ops cost seconds
  return cfg, layer, xs, weights, call


@pytest.mark.parametrize("rule", ["linear", "delta"])
def test_layer_matches_numpy_over_segments(rule):
  cfg, layer, xs, params, call = small_layer(0, update_rule=rule)
  state = init_memory(2, 2, 8, 8)
  got = []
  for x in xs:
    out, state = call(layer, x, state)
    got.append(out)
  for b in range(2):
    want = np_layer([x[b].astype(np.float64) for x in xs], *params, BETA, rule, cfg.rope_theta)
    for s in range(3):
      np.testing.assert_allclose(got[s][b], want[s], rtol=2e-4, atol=2e-4)


def test_query_gate_matches_numpy_and_varies_by_token():
  """gate="query" (beyond the paper): sigmoid(beta + q . u) per token, against the numpy layer;
  with u = 0 (its initial value) it is the paper's per-head gate."""
  cfg, layer, xs, params, call = small_layer(2, gate="query")
  assert not np.asarray(layer.gate_u[...]).any()

  def run():
    state, outs = init_memory(2, 2, 8, 8), []
    for x in xs:
      out, state = call(layer, x, state)
      outs.append(np.asarray(out))
    return outs

  paper = [np_layer([x[b].astype(np.float64) for x in xs], *params, BETA, "linear",
                    cfg.rope_theta) for b in range(2)]
  for s, out in enumerate(run()):                              # u = 0: the paper's layer
    for b in range(2):
      np.testing.assert_allclose(out[b], paper[b][s], rtol=2e-4, atol=2e-4)
  u = np.random.default_rng(5).normal(size=(4, 8))
  layer.gate_u[...] = jnp.asarray(u, jnp.float32)
  got = run()
  for b in range(2):
    want = np_layer([x[b].astype(np.float64) for x in xs], *params, BETA, "linear",
                    cfg.rope_theta, u=u)
    for s in range(3):
      np.testing.assert_allclose(got[s][b], want[s], rtol=2e-4, atol=2e-4)
    assert np.abs(want[1] - paper[b][1]).max() > 1e-2           # the gate changed the output


@pytest.mark.parametrize("previous_len", [None, 2])
def test_two_segments_matches_numpy(previous_len):
  """local_context="two_segments" (beyond the paper): xl's local attention over the previous
  segment (all 6 tokens, or its last previous_len) and the current one, the compressive memory read
  and written as in eqs. 7-10; the first segment sees itself alone. Against the numpy layer, and
  unlike the paper's layer."""
  cfg, layer, xs, params, call = small_layer(4, local_context="two_segments",
                                             previous_len=previous_len)
  carried = cfg.carried_len
  assert carried == (previous_len or 6)
  state = xl.WithPrevious(init_memory(2, 2, 8, 8), xl.init_prev(2, carried, 2, 8, jnp.float32))
  got = []
  for x in xs:
    out, state = call(layer, x, state)
    got.append(np.asarray(out))
  # carried on: the last segment's last `carried` raw keys
  last_keys = np.einsum("bnd,dhk->bnhk", xs[2], params[1])[:, -carried:]
  np.testing.assert_allclose(state.prev.k, last_keys, rtol=1e-4, atol=1e-5)
  assert np.asarray(state.prev.written).all() and float(state.memory.z.min()) > 0
  for b in range(2):
    rows = [x[b].astype(np.float64) for x in xs]
    want = np_layer(rows, *params, BETA, "linear", cfg.rope_theta, previous=carried)
    paper = np_layer(rows, *params, BETA, "linear", cfg.rope_theta)
    for s in range(3):
      np.testing.assert_allclose(got[s][b], want[s], rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(want[0], paper[0], rtol=1e-12)     # nothing before segment 1
    assert np.abs(want[1] - paper[1]).max() > 1e-2                 # the previous segment is seen


@pytest.mark.parametrize("local_context", ["segment", "two_segments"])
def test_memory_gradient_stop_trains_the_projections_by_the_local_path_alone(local_context):
  """memory_gradient="stop" (beyond the paper, a diagnostic): the paper's outputs and gradients of
  beta and W_O; W_Q, W_K, W_V get the gradient of eq. 10's local term alone. For a loss linear in
  the outputs that is the gradient with the memory kept empty (its read 0, the local term
  (1 - sigmoid(beta)) A_dot unchanged), which the paper's layer does not give."""
  previous_len = 2 if local_context == "two_segments" else None

  def loss_and_grads(memory_gradient, knockout=False):
    cfg, layer, xs, _, _ = small_layer(6, local_context=local_context, previous_len=previous_len,
                                       memory_gradient=memory_gradient)
    rs = np.random.default_rng(7).normal(size=(3, 2, 6, 32)).astype(np.float32)
    graphdef, params = nnx.split(layer)

    def loss(params):
      layer, state = nnx.merge(graphdef, params), init_memory(2, 2, 8, 8)
      if local_context == "two_segments":
        state = xl.WithPrevious(state, xl.init_prev(2, cfg.carried_len, 2, 8, jnp.float32))
      total = 0.0
      for x, r in zip(xs, rs):   # knock-out: nothing written, the memory stays empty
        out, state = layer(x, state, jnp.zeros((2, 6)) if knockout else None)
        total = total + jnp.sum(out * r)
      return total

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    return float(value), {name: np.asarray(grads[name][...]) for name in
                          ("w_q", "w_k", "w_v", "w_o", "beta")}

  (full, g_full), (stop, g_stop) = loss_and_grads("full"), loss_and_grads("stop")
  _, g_local = loss_and_grads("full", knockout=True)
  np.testing.assert_allclose(stop, full, rtol=1e-6)
  for name in ("w_o", "beta"):
    np.testing.assert_allclose(g_stop[name], g_full[name], rtol=1e-5, atol=1e-6)
  for name in ("w_q", "w_k", "w_v"):
    np.testing.assert_allclose(g_stop[name], g_local[name], rtol=1e-5, atol=1e-6)
    assert np.abs(g_full[name] - g_local[name]).max() > 1e-2 * np.abs(g_local[name]).max()


def test_memory_gradient_needs_a_memory():
  with pytest.raises(UserError, match='memory_gradient="full" or memory="infini"'):
    ModelConfig(memory="xl", memory_gradient="stop")


def test_query_gate_needs_a_memory():
  with pytest.raises(UserError, match='gate="head" or memory="infini"'):
    ModelConfig(memory="none", gate="query")


def test_local_only_while_the_memory_is_empty_per_row():
  """empty_memory_gate="local_only": the local path alone while a row's memory is empty, eq. 10
  after; one row's memory is kept empty through its first segment (write weight 0), so the two
  rows of one batch are in different states at the second segment. Training and decoding paths."""
  cfg, layer, xs, params, call = small_layer(1, empty_memory_gate="local_only")
  weights = [np.float32([[0] * 6, [1] * 6])] + [np.ones((2, 6), np.float32)] * 2  # row 0: no write
  empty = init_memory(2, 2, 8, 8)

  def run(layer):
    state, outs = empty, []
    for x, w in zip(xs, weights):
      out, state = call(layer, x, state, w)
      outs.append(out)
    return outs, state

  got = [np.asarray(out) for out in run(layer)[0]]
  rows = [[x[b].astype(np.float64) for x in xs] for b in range(2)]
  ref = functools.partial(np_layer, wq=params[0], wk=params[1], wv=params[2], wo=params[3],
                          beta=BETA, rule="linear", theta=cfg.rope_theta)
  want_row0 = (ref(rows[0][:1], empty_memory_gate="local_only")
               + ref(rows[0][1:], empty_memory_gate="local_only"))
  want_row1 = ref(rows[1], empty_memory_gate="local_only")
  paper = ref(rows[1])
  for s in range(3):
    np.testing.assert_allclose(got[s][0], want_row0[s], rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(got[s][1], want_row1[s], rtol=2e-4, atol=2e-4)
  assert np.abs(want_row1[0] - paper[0]).max() > 1e-2             # the first segment differs ...
  np.testing.assert_allclose(want_row1[1], paper[1], rtol=1e-12)  # ... the later ones do not

  # Decoding (one token at a time against the segment's cache) gives the same second segment.
  state = call(layer, xs[0], empty, weights[0])[1]
  cache = KVCache(np.zeros((2, 6, 2, 8), np.float32), np.zeros((2, 6, 2, 8), np.float32))
  for t in range(6):
    write = np.full((2, 6), float(t == 5), np.float32)
    out, new_state, cache = call(layer, xs[1][:, t:t + 1], state, write, cache,
                                 np.full((2,), t, np.int32))
    np.testing.assert_allclose(np.asarray(out)[:, 0], got[1][:, t], rtol=2e-4, atol=2e-4)
  assert not np.asarray(is_empty(new_state)).any()

  grads = nnx.jit(nnx.grad(lambda layer: sum(jnp.sum(out ** 2) for out in run(layer)[0])))(layer)
  beta_grad = np.asarray(grads.beta[...])
  assert np.all(np.isfinite(beta_grad)) and np.all(beta_grad != 0)


def np_causal_attention(q, k, v):
  """float64 causal softmax attention with grouped heads: q [b, n, H, d], k, v [b, n, K, d]."""
  b, n, heads, d = q.shape
  group = heads // k.shape[2]
  out = np.zeros((b, n, heads, d))
  for h in range(heads):
    s = np.einsum("btd,bsd->bts", q[:, :, h], k[:, :, h // group]) / np.sqrt(d)
    s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    out[:, :, h] = np.einsum("bts,bsd->btd", p / p.sum(-1, keepdims=True), v[:, :, h // group])
  return out


@pytest.mark.parametrize("n, block", [(16, 4), (16, 5), (16, 16), (16, 32), (1, 4)])
def test_blocked_attention_matches_numpy(n, block):
  """Every blocking, an uneven last block (16 = 5 + 5 + 5 + 1) and a single block included."""
  rng = np.random.default_rng(3)
  q = rng.normal(size=(2, n, 4, 8))
  k, v = rng.normal(size=(2, n, 2, 8)), rng.normal(size=(2, n, 2, 8))
  got = blocked_attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), block=block)
  np.testing.assert_allclose(got, np_causal_attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_blocked_attention_gradients_match_reference():
  rng = np.random.default_rng(4)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 20, 4, 8)), jnp.float32) for _ in range(3))
  k, v = k[:, :, :2], v[:, :, :2]
  probe = jnp.asarray(rng.normal(size=(2, 20, 4, 8)), jnp.float32)

  def grads(attend):
    return jax.grad(lambda *x: jnp.sum(attend(*x) * probe), argnums=(0, 1, 2))(q, k, v)

  for got, want in zip(grads(functools.partial(blocked_attention, block=6)),
                       grads(lambda *x: local_attention(*x, "reference"))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_blocked_attention_skips_the_scores_above_the_diagonal_blocks():
  """Compiled FLOPs: with 8 blocks the attention products cost 9/16 of the full square's."""
  shape = jax.ShapeDtypeStruct((1, 1024, 4, 64), jnp.float32)

  def flops(attend):
    return jax.jit(attend).lower(shape, shape, shape).compile().cost_analysis()["flops"]

  ratio = (flops(functools.partial(blocked_attention, block=128))
           / flops(functools.partial(blocked_attention, block=1024)))
  assert 0.5 < ratio < 0.6, ratio


@pytest.mark.parametrize("impl", ["xla", "blocked"])
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


def test_rope_tables_are_constants_for_static_positions():
  """Static positions (training's 0..n-1) compile cos/sin in as constants: no cosine or sine is
  left in the program, which XLA would otherwise fuse into the product and evaluate per element.
  Traced positions (decoding) give the same rotation; both match the float64 numpy one."""
  from infini_jax.model.layers import rope
  x = jax.random.normal(jax.random.key(0), (2, 48, 3, 16))
  static = jax.jit(lambda x: rope(x, 10_000.0))
  traced = jax.jit(lambda x, p: rope(x, 10_000.0, p))
  hlo = static.lower(x).compile().as_text()
  assert " cosine(" not in hlo and " sine(" not in hlo
  assert " cosine(" in traced.lower(x, jnp.arange(48)).compile().as_text()
  want = np.stack([np.stack([np_rope(np.asarray(x[b, :, h], np.float64), 10_000.0)
                             for h in range(3)], 1) for b in range(2)])
  np.testing.assert_allclose(static(x), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(traced(x, jnp.arange(48)), want, rtol=1e-5, atol=1e-5)

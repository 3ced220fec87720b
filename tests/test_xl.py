"""memory="xl" (Transformer-XL): one layer against numpy, no gradient into the previous segment."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from infini_jax import decode
from infini_jax.evals import state
from infini_jax.errors import UserError
from infini_jax.model import InfiniTransformer, ModelConfig
from infini_jax.model import xl
from infini_jax.model.attention import InfiniAttention
from infini_jax.training import flops

N = 8
CFG = ModelConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                  mlp_dim=64, segment_len=N, memory="xl")


def np_rope(x, positions, theta=10_000.0):
  """Rotate-half RoPE written out: pairs (i, i + d/2) turn by position * theta^(-2i/d)."""
  d = x.shape[-1]
  angle = positions[:, None] * theta ** (-np.arange(0, d, 2) / d)           # [seq, d/2]
  cos, sin = np.cos(angle)[None, :, None], np.sin(angle)[None, :, None]
  a, b = x[..., :d // 2], x[..., d // 2:]
  return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def np_xl_layer(attn, x1, x2, m=N):
  """Segment 2's attention output: queries at 0..N-1 over [segment 1's last m at -m..-1;
  segment 2]."""
  w = {name: np.asarray(getattr(attn, "w_" + name)[...], np.float64) for name in "qkvo"}
  proj = lambda x, name: np.einsum("bnd,dhk->bnhk", x, w[name])
  q = np_rope(proj(x2, "q"), np.arange(N))
  keys = np.concatenate([np_rope(proj(x1, "k")[:, N - m:], np.arange(-m, 0)),
                         np_rope(proj(x2, "k"), np.arange(N))], axis=1)
  values = np.concatenate([proj(x1, "v")[:, N - m:], proj(x2, "v")], axis=1)
  group = CFG.num_heads // CFG.num_kv_heads
  keys, values = np.repeat(keys, group, axis=2), np.repeat(values, group, axis=2)
  scores = np.einsum("bqhd,bkhd->bhqk", q, keys) / np.sqrt(q.shape[-1])
  visible = np.arange(m + N)[None, :] <= np.arange(N)[:, None] + m          # [N, m + N]
  scores = np.where(visible, scores, -np.inf)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = np.einsum("bhqk,bkhd->bqhd", weights, values)
  return np.einsum("bnhk,hkd->bnd", out, w["o"])


@pytest.mark.parametrize("previous_len", [None, 3])
def test_second_segment_attends_to_the_first_as_numpy_does(previous_len):
  """The paper's baseline sees all of segment 1; previous_len=3 (beyond the paper) its last 3."""
  cfg = ModelConfig(**dict(CFG.__dict__, previous_len=previous_len))
  attn = InfiniAttention(cfg, rngs=nnx.Rngs(0))
  x1, x2 = np.random.default_rng(0).normal(size=(2, 2, N, CFG.d_model)).astype(np.float32)
  empty = xl.init_prev(2, cfg.carried_len, CFG.num_kv_heads, CFG.dim_per_head, jnp.float32)
  _, prev = attn(jnp.asarray(x1), empty)
  assert prev.k.shape[1] == cfg.carried_len == (previous_len or N)
  out, _ = attn(jnp.asarray(x2), prev)
  np.testing.assert_allclose(out, np_xl_layer(attn, x1, x2, cfg.carried_len), atol=2e-5,
                             rtol=2e-4)


def test_an_empty_previous_segment_is_never_attended_to():
  attn = InfiniAttention(CFG, rngs=nnx.Rngs(1))
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, N, CFG.d_model)), jnp.float32)
  empty = xl.init_prev(1, N, CFG.num_kv_heads, CFG.dim_per_head, jnp.float32)
  out, _ = attn(x, empty)
  local = dict(CFG.__dict__, memory="none", attention_impl="reference")
  plain = InfiniAttention(ModelConfig(**local), rngs=nnx.Rngs(1))   # same weights, no previous
  np.testing.assert_allclose(out, plain(x, None)[0], atol=1e-5, rtol=1e-5)


def test_no_gradient_reaches_the_previous_segment():
  attn = InfiniAttention(CFG, rngs=nnx.Rngs(2))
  x1, x2 = (jnp.asarray(a, jnp.float32)
            for a in np.random.default_rng(2).normal(size=(2, 1, N, CFG.d_model)))
  empty = xl.init_prev(1, N, CFG.num_kv_heads, CFG.dim_per_head, jnp.float32)

  def second(x1):
    return attn(x2, attn(x1, empty)[1])[0]

  assert float(jnp.abs(second(x1) - second(x1 + 1.0)).max()) > 1e-3   # segment 1 is read
  grad = jax.grad(lambda x1: jnp.sum(second(x1) ** 2))(x1)
  assert float(jnp.abs(grad).max()) == 0.0
  prev = attn(x1, empty)[1]
  grad_k, grad_v = jax.grad(lambda k, v: jnp.sum(attn(x2, prev._replace(k=k, v=v))[0] ** 2),
                            argnums=(0, 1))(prev.k, prev.v)
  assert float(jnp.abs(grad_k).max()) == 0.0 and float(jnp.abs(grad_v).max()) == 0.0


def streamed(model):
  """Four segments of random tokens read at once and in two calls, the state passed between:
  asserts that the logits agree; returns (tokens, logits, the state after them)."""
  tokens = jax.random.randint(jax.random.key(1), (2, 4 * N), 0, model.cfg.vocab_size)
  logits, memory = model(tokens)
  first, carried = model(tokens[:, :2 * N])
  rest, _ = model(tokens[:, 2 * N:], carried)
  np.testing.assert_allclose(jnp.concatenate([first, rest], 1), logits, atol=1e-5, rtol=1e-5)
  return tokens, logits, memory


def test_model_streams_and_has_the_parameters_of_none():
  model = InfiniTransformer(CFG, rngs=nnx.Rngs(0))
  tokens, logits, memory = streamed(model)
  assert len(memory) == CFG.num_layers and memory[0].k.shape == (2, N, 2, CFG.dim_per_head)
  none = InfiniTransformer(ModelConfig(**dict(CFG.__dict__, memory="none")), rngs=nnx.Rngs(0))
  count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  assert count(model) == count(none)
  assert CFG.memory_state_size() == 2 * N * 2 * CFG.dim_per_head * CFG.num_layers
  # Each query also meets N previous keys: QK^T and AV, 2 FLOPs a multiply-add, every head, layer.
  extra = flops.forward_flops_per_token(CFG) - flops.forward_flops_per_token(none.cfg)
  assert extra == CFG.num_layers * 2 * 2 * CFG.num_heads * CFG.dim_per_head * N


def test_decoding_xl_is_a_clear_error():
  model = InfiniTransformer(CFG, rngs=nnx.Rngs(0))
  with pytest.raises(UserError, match='not implemented for memory="xl"'):
    decode.prefill(model, jnp.zeros((1, N), jnp.int32))


def test_infini_with_two_segments_streams_and_carries_both_states():
  """local_context="two_segments" (beyond the paper): the memory and xl's previous segment are
  carried together; fed in pieces it gives the same logits; its state per sequence is both; the
  parameters are the paper's model's; decoding refuses it by name."""
  cfg = ModelConfig(**dict(CFG.__dict__, memory="infini", local_context="two_segments"))
  model = InfiniTransformer(cfg, rngs=nnx.Rngs(0))
  tokens, logits, memory = streamed(model)
  assert isinstance(memory[0], xl.WithPrevious) and memory[0].prev.k.shape == (2, N, 2, cfg.dim_per_head)
  assert memory[0].memory.M.dtype == jnp.float32 and float(memory[0].memory.z.min()) > 0
  paper = InfiniTransformer(ModelConfig(**dict(cfg.__dict__, local_context="segment")),
                            rngs=nnx.Rngs(0))
  count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  assert count(model) == count(paper)
  assert not np.allclose(paper(tokens)[0][:, N:], logits[:, N:], atol=1e-3)   # segments 2+ differ
  d, layers = cfg.dim_per_head, cfg.num_layers
  assert cfg.memory_state_size() == layers * 2 * (d * (d + 1) + 2 * N * d)
  assert state.state_per_sequence(cfg)["carried"]["bytes"] == 4 * cfg.memory_state_size()
  with pytest.raises(UserError, match='not implemented for local_context="two_segments"'):
    decode.prefill(model, jnp.zeros((1, N), jnp.int32))


def test_two_segments_is_an_option_of_infini():
  with pytest.raises(UserError, match='local_context=.two_segments. is an option of memory="infini"'):
    ModelConfig(memory="xl", local_context="two_segments")


def test_a_short_carry_streams_and_is_counted():
  """previous_len=3 (beyond the paper): the carry is the last 3 tokens' keys and values a layer,
  fed in pieces it gives the same logits, and its state and FLOPs count 3 tokens, not N."""
  cfg = ModelConfig(**dict(CFG.__dict__, previous_len=3))
  model = InfiniTransformer(cfg, rngs=nnx.Rngs(0))
  tokens, logits, memory = streamed(model)
  assert memory[0].k.shape == (2, 3, 2, cfg.dim_per_head) and memory[0].written.all()
  assert cfg.memory_state_size() == 2 * 3 * 2 * cfg.dim_per_head * cfg.num_layers
  none = ModelConfig(**dict(CFG.__dict__, memory="none"))
  extra = flops.forward_flops_per_token(cfg) - flops.forward_flops_per_token(none)
  assert extra == cfg.num_layers * 2 * 2 * cfg.num_heads * cfg.dim_per_head * 3
  whole = InfiniTransformer(CFG, rngs=nnx.Rngs(0))(tokens)[0]      # the same weights, all of N
  np.testing.assert_allclose(whole[:, :N], logits[:, :N], atol=1e-5, rtol=1e-5)
  assert not np.allclose(whole[:, N:], logits[:, N:], atol=1e-3)


@pytest.mark.parametrize("changes, message", [
    ({"memory": "none", "previous_len": 4}, 'previous_len=4 sets how much of the previous segment'),
    ({"memory": "infini", "previous_len": 4}, 'set memory="xl" or local_context="two_segments"'),
    ({"memory": "xl", "previous_len": 0}, r"previous_len=0 must be in 1..segment_len \(8\)"),
    ({"memory": "xl", "previous_len": 9}, r"previous_len=9 must be in 1..segment_len \(8\)"),
])
def test_previous_len_needs_a_carry_and_fits_a_segment(changes, message):
  with pytest.raises(UserError, match=message):
    ModelConfig(**dict(CFG.__dict__, **changes))

"""The Infini-Transformer: causality, scan vs loop, streaming, gate limits, BPTT, remat, bf16, compile."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from infini_jax.model import InfiniTransformer, ModelConfig, stack_layers, unstack_layers
from infini_jax.model.config import REMAT_POLICIES

SEG = 8
CFG = ModelConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                  mlp_dim=64, segment_len=SEG, gate_init=0.0)


def make(cfg=CFG, seed=0):
  return InfiniTransformer(cfg, rngs=nnx.Rngs(seed))


def tokens(batch, seq, seed=1, low=0, high=64):
  return jax.random.randint(jax.random.key(seed), (batch, seq), low, high)


def forward(model, toks, memory=None):
  return nnx.jit(lambda m, t, mem: m(t, mem))(model, toks, memory)


def test_logits_shape_and_memory_per_layer():
  model = make()
  logits, memory = forward(model, tokens(2, 4 * SEG))
  assert logits.shape == (2, 4 * SEG, 64) and logits.dtype == jnp.float32
  assert len(memory) == CFG.num_layers
  d = CFG.dim_per_head
  assert memory[0].M.shape == (2, CFG.num_kv_heads, d, d) and memory[0].z.shape == (2, 2, d)


@pytest.mark.parametrize("rule", ["linear", "delta"])
def test_causal_across_segment_boundaries(rule):
  model = make(dataclasses.replace(CFG, update_rule=rule))
  toks = tokens(1, 4 * SEG)
  base, _ = forward(model, toks)
  for t in (3, SEG, 2 * SEG + 5):   # inside the first segment, at a boundary, inside a later one
    changed, _ = forward(model, toks.at[0, t].set((toks[0, t] + 1) % 64))
    np.testing.assert_array_equal(changed[0, :t], base[0, :t])
    assert float(jnp.abs(changed[0, t:] - base[0, t:]).max()) > 0  # and the change does propagate
  # A change in the first segment reaches a later segment only through the memory:
  baseline = make(dataclasses.replace(CFG, memory="none"))
  b0, _ = forward(baseline, toks)
  b1, _ = forward(baseline, toks.at[0, 2].set((toks[0, 2] + 1) % 64))
  np.testing.assert_array_equal(b0[0, SEG:], b1[0, SEG:])


def python_loop_forward(model, toks):
  """Segments and layers unrolled in Python, each layer's parameters sliced from the stack."""
  graphdef, state = nnx.split(model.blocks)
  cfg = model.cfg
  memory = list(model.init_memory(toks.shape[0]))
  outs = []
  for s in range(toks.shape[1] // SEG):
    h = model.embed(toks[:, s * SEG:(s + 1) * SEG], cfg.compute_dtype)
    for layer in range(cfg.num_layers):
      block = nnx.merge(graphdef, jax.tree.map(lambda x: x[layer], state))
      h, memory[layer] = block(h, memory[layer])
    outs.append(model.logits(model.final_norm(h)))
  return jnp.concatenate(outs, axis=1), memory


def test_scan_equals_python_loop():
  model = make()
  toks = tokens(2, 5 * SEG)
  got, got_memory = forward(model, toks)
  want, want_memory = python_loop_forward(model, toks)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  for g, w in zip(got_memory, want_memory):
    np.testing.assert_allclose(g.M, w.M, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("rule", ["linear", "delta"])
def test_pieces_with_memory_equal_one_call(rule):
  model = make(dataclasses.replace(CFG, update_rule=rule))
  toks = tokens(2, 6 * SEG)
  whole, whole_memory = forward(model, toks)
  memory, parts = None, []
  for lo, hi in ((0, SEG), (SEG, 4 * SEG), (4 * SEG, 6 * SEG)):
    logits, memory = forward(model, toks[:, lo:hi], memory)
    parts.append(logits)
  np.testing.assert_allclose(jnp.concatenate(parts, axis=1), whole, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(memory[-1].z, whole_memory[-1].z, rtol=1e-6)


def test_gate_forced_local_equals_memory_none_baseline():
  infini = make()
  baseline = make(dataclasses.replace(CFG, memory="none"))
  # Same parameters minus beta: copy every shared parameter across.
  shared = nnx.to_pure_dict(nnx.state(infini, nnx.Param))
  del shared["blocks"]["attn"]["beta"]
  baseline_params = nnx.state(baseline, nnx.Param)
  nnx.replace_by_pure_dict(baseline_params, shared)
  nnx.update(baseline, baseline_params)
  infini.blocks.attn.beta[...] = jnp.full_like(infini.blocks.attn.beta[...], -jnp.inf)
  toks = tokens(2, 4 * SEG)
  got, _ = forward(infini, toks)
  want, memory = forward(baseline, toks)
  assert memory == ()
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  # With an open gate a segment's logits depend on the memory of the segments before it.
  infini.blocks.attn.beta[...] = jnp.zeros_like(infini.blocks.attn.beta[...])
  with_memory, _ = forward(infini, toks)
  fresh, _ = forward(infini, toks[:, SEG:2 * SEG])
  assert float(jnp.abs(with_memory[:, SEG:2 * SEG] - fresh).max()) > 1e-3


def last_segment_loss(model, toks):
  logits, _ = model(toks)
  return jax.nn.logsumexp(logits[:, -SEG:], axis=-1).mean()


def embedding_grad_of_first_segment(cfg):
  """Gradient of the last segment's loss w.r.t. embedding rows used only in the first segment."""
  model = make(cfg)
  first = tokens(2, SEG, seed=3, low=0, high=32)          # ids < 32 only in segment 1
  rest = tokens(2, 3 * SEG, seed=4, low=32, high=64)
  grads = nnx.grad(last_segment_loss)(model, jnp.concatenate([first, rest], axis=1))
  return grads, grads.embed.embedding[...][:32]


def test_bptt_reaches_first_segment_and_baseline_does_not():
  _, g = embedding_grad_of_first_segment(CFG)
  assert float(jnp.abs(g).max()) > 1e-6
  _, g_none = embedding_grad_of_first_segment(dataclasses.replace(CFG, memory="none"))
  np.testing.assert_array_equal(g_none, 0.0)


def test_remat_policies_and_unrolled_layers_give_the_same_gradients():
  variants = {**{remat: dict(remat=remat) for remat in REMAT_POLICIES},
              "unrolled layers": dict(scan_layers=False),
              "unrolled layers, save_dots": dict(scan_layers=False, remat="save_dots")}
  grads = {name: embedding_grad_of_first_segment(dataclasses.replace(CFG, **kw))[0]
           for name, kw in variants.items()}
  for name in variants:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 grads["none"], grads[name])


def test_save_dots_recomputes_no_matmul():
  """Counted in the lowered gradient: "none" runs each matmul of the forward pass once, "segment"
  all of them twice, "save_dots" each once (it recomputes elementwise work only)."""
  def dots(remat):
    model = make(dataclasses.replace(CFG, remat=remat, scan_layers=False))
    graphdef, state = nnx.split(model)
    fn = jax.jit(jax.grad(lambda s, t: last_segment_loss(nnx.merge(graphdef, s), t)))
    text = fn.lower(state, tokens(2, 2 * SEG)).as_text()       # before XLA's optimisations
    return text.count("stablehlo.dot_general")

  none, save_dots, segment = dots("none"), dots("save_dots"), dots("segment")
  assert none == save_dots < segment, (none, save_dots, segment)


def test_bf16_compute_keeps_float32_memory_over_100k_tokens():
  cfg = dataclasses.replace(CFG, dtype="bfloat16", segment_len=256, update_rule="delta")
  model = make(cfg)
  step = nnx.jit(lambda m, t, mem: m(t, mem))
  memory = None
  chunk = 16 * 256
  for i in range(25):                          # 25 x 4096 = 102,400 tokens
    logits, memory = step(model, tokens(1, chunk, seed=i), memory)
    assert bool(jnp.isfinite(logits).all()), f"non-finite logits in chunk {i}"
  assert all(m.M.dtype == jnp.float32 and m.z.dtype == jnp.float32 for m in memory)
  assert bool(jnp.isfinite(memory[0].M).all())
  assert float(memory[0].z.min()) > 1000      # the normaliser really accumulated ~100K tokens


def compiled_size(num_segments):
  model = make()
  graphdef, state = nnx.split(model)
  fn = jax.jit(jax.grad(lambda s, t: last_segment_loss(nnx.merge(graphdef, s), t)))
  spec = jax.ShapeDtypeStruct((1, num_segments * SEG), jnp.int32)
  return len(fn.lower(state, spec).compile().as_text())


def test_compiled_program_does_not_grow_with_segments():
  assert compiled_size(64) < 1.5 * compiled_size(4)


def test_stack_unstack_round_trip():
  memory = make().init_memory(3)
  again = unstack_layers(stack_layers(memory))
  assert len(again) == len(memory)
  jax.tree.map(np.testing.assert_array_equal, again, memory)


@pytest.mark.parametrize("kwargs, message", [
    (dict(d_model=30, num_heads=4), "d_model=30 is not divisible by num_heads=4"),
    (dict(num_heads=8, num_kv_heads=3), "num_heads=8 is not divisible by num_kv_heads=3"),
    (dict(memory="mamba"), "memory='mamba' is not one of infini, none, xl"),
    (dict(update_rule="hebb"), "update_rule='hebb'"),
    (dict(remat="all"), "remat='all'"),
    (dict(dtype="float16"), "dtype='float16'"),
])
def test_invalid_configs_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(CFG, **kwargs)


def test_sequence_not_multiple_of_segment_raises():
  with pytest.raises(ValueError, match=f"sequence length 20 is not a multiple of segment_len {SEG}"):
    make()(tokens(1, 20))

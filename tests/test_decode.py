"""Streaming generation: incremental decoding equals one forward pass; sampling; stop; ragged batches."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from infini_jax import decode
from infini_jax.model import InfiniTransformer, ModelConfig

SEG = 8
VOCAB = 64
CFG = ModelConfig(vocab_size=VOCAB, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                  mlp_dim=64, segment_len=SEG, gate_init=0.0)
VARIANTS = {"linear": dict(update_rule="linear"), "delta": dict(update_rule="delta"),
            "none": dict(memory="none"),
            # Llama 3.1's RoPE scaling, with a context short enough that it changes frequencies.
            "llama3_rope": dict(rope_scaling={"factor": 8.0,
                                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                              "original_max_position_embeddings": 8})}


@functools.cache
def make(variant="linear", dtype="float32"):
  return InfiniTransformer(dataclasses.replace(CFG, **VARIANTS[variant], dtype=dtype),
                           rngs=nnx.Rngs(0))


def tokens(batch, seq, seed=1):
  return jax.random.randint(jax.random.key(seed), (batch, seq), 0, VOCAB)


apply = nnx.jit(lambda model, toks: model(toks))   # one function, so its compilations are reused


def forward(model, toks):
  """Logits of one forward pass over ``toks``, right-padded to whole segments."""
  length = toks.shape[1]
  logits, _ = apply(model, jnp.pad(toks, ((0, 0), (0, -length % SEG))))
  return logits[:, :length]


def memory_after(model, toks):
  """The model's stacked memory after the whole segments of ``toks``."""
  _, memory = apply(model, toks)
  return jax.tree.map(lambda *xs: jnp.stack(xs), *memory)


# bfloat16: both paths run the same layer code in the same order of operations but on different
# shapes (a whole segment at once vs. one token against the cache), so their float32 accumulations
# differ at the 1e-7 level. Rounded to bfloat16 (8 significant bits, steps of 2**-8 = 0.4 %) they
# almost always give the same value, but one at a rounding boundary lands one step apart, and that
# step travels on through the layers: logits of size ~3 may then differ by a few steps of 0.4 %.
# 3e-2 allows that and still catches a wrong position, mask or memory write (differences of O(1)).
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2}


@pytest.mark.parametrize("variant, dtype", [(v, "float32") for v in VARIANTS]
                         + [(v, "bfloat16") for v in ("linear", "delta", "none")])
def test_incremental_decoding_equals_full_forward(variant, dtype):
  model = make(variant, dtype)
  toks = tokens(2, 4 * SEG + 3)
  want = forward(model, toks)
  prompt = 5                           # shorter than a segment: the prefill fills only the cache
  state, logits = decode.prefill(model, toks[:, :prompt])
  got = [logits]
  for t in range(prompt, toks.shape[1] - 1):   # crosses the boundaries at 8, 16, 24 and 32
    logits, state = decode.decode_step(model, state, toks[:, t])
    got.append(logits)
  tol = TOLERANCE[dtype]
  np.testing.assert_allclose(jnp.stack(got, axis=1), want[:, prompt - 1:-1], atol=tol, rtol=tol)
  np.testing.assert_array_equal(state.pos, [2, 2])
  assert state.k.dtype == model.cfg.compute_dtype
  if dtype == "bfloat16":   # it did compute in bfloat16: its logits are not the float32 model's
    assert np.abs(want - forward(make(variant), toks)).max() > 1e-3
  if variant == "none":
    assert state.memory is None
  else:   # every complete segment was folded in exactly once; the memory stays float32
    assert state.memory.M.dtype == state.memory.z.dtype == jnp.float32
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4),
                 state.memory, memory_after(model, toks[:, :4 * SEG]))


def test_prefill_of_ragged_batch_matches_forward():
  model = make("delta")
  toks = tokens(2, 3 * SEG, seed=2)
  lengths = jnp.array([2 * SEG + 3, SEG])
  state, logits = decode.prefill(model, toks, lengths)
  want = forward(model, toks)
  for b, length in enumerate(lengths):
    np.testing.assert_allclose(logits[b], want[b, length - 1], atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(state.pos, [3, 0])
  for b, segments in enumerate((2, 1)):
    M = memory_after(model, toks[b:b + 1, :segments * SEG]).M
    np.testing.assert_allclose(state.memory.M[:, b], M[:, 0], rtol=1e-5, atol=1e-4)


def test_prefill_in_pieces_equals_one_prefill():
  model = make("linear")
  toks = tokens(1, 3 * SEG + 5, seed=3)
  state, logits = decode.prefill(model, toks)
  piece_state, _ = decode.prefill(model, toks[:, :2 * SEG])
  piece_state, piece_logits = decode.prefill(model, toks[:, 2 * SEG:], state=piece_state)
  np.testing.assert_allclose(piece_logits, logits, atol=1e-5, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
               piece_state, state)
  with pytest.raises(ValueError, match="prefill continues only from segment boundaries"):
    decode.prefill(model, toks, state=state)


def prefill_temp_bytes(model, segments):
  prefill = jax.jit(lambda t: decode.prefill(model, t)[1])
  compiled = prefill.lower(jax.ShapeDtypeStruct((1, segments * SEG), jnp.int32)).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_memory_use_does_not_grow_with_prompt_length():
  model = make("linear")
  assert prefill_temp_bytes(model, 64) == prefill_temp_bytes(model, 4)
  shapes = lambda n: jax.eval_shape(lambda t: decode.prefill(model, t), tokens(2, n))
  assert shapes(4 * SEG) == shapes(64 * SEG + 5)


def test_greedy_generation_is_deterministic_and_matches_forward():
  model = make("delta")
  prompt = tokens(2, SEG + 6, seed=4)
  first = decode.generate(model, prompt, 2 * SEG, return_logits=True)
  again = decode.generate(model, prompt, 2 * SEG, return_logits=True)
  np.testing.assert_array_equal(first.tokens, again.tokens)
  np.testing.assert_array_equal(first.lengths, [2 * SEG, 2 * SEG])
  np.testing.assert_array_equal(first.tokens, jnp.argmax(first.logits, axis=-1))
  # The sequence it wrote, read in one pass, gives the logits it decoded with.
  want = forward(model, jnp.concatenate([prompt, first.tokens], axis=1))
  np.testing.assert_allclose(first.logits, want[:, SEG + 5:-1], atol=1e-4, rtol=1e-4)


def test_stop_token_ends_each_sequence_and_pads_after():
  model = make("linear")
  prompt = tokens(2, SEG + 2, seed=5)
  free = decode.generate(model, prompt, 12)
  stop = int(free.tokens[0, 3])
  first_stop = [int(np.argmax(np.asarray(row) == stop)) if stop in row else None
                for row in free.tokens]
  stopped = decode.generate(model, prompt, 12, stop_token=stop, pad_token=VOCAB - 1)
  for b, at in enumerate(first_stop):
    if at is None:
      np.testing.assert_array_equal(stopped.tokens[b], free.tokens[b])
      assert int(stopped.lengths[b]) == 12
    else:
      np.testing.assert_array_equal(stopped.tokens[b, :at + 1], free.tokens[b, :at + 1])
      np.testing.assert_array_equal(stopped.tokens[b, at + 1:], VOCAB - 1)
      assert int(stopped.lengths[b]) == at + 1
  assert first_stop[0] <= 3


def test_top_p_near_zero_equals_greedy():
  model = make("linear")
  prompt = tokens(2, 2 * SEG + 1, seed=6)
  greedy = decode.generate(model, prompt, 10)
  nucleus = decode.generate(model, prompt, 10, temperature=1.5, top_p=1e-6, rng=jax.random.key(0))
  np.testing.assert_array_equal(nucleus.tokens, greedy.tokens)


def test_temperature_sampling_is_reproducible_with_a_fixed_rng():
  model = make("linear")
  prompt = tokens(2, SEG + 3, seed=7)
  run = lambda seed: decode.generate(model, prompt, 12, temperature=1.0, top_p=0.9,
                                     rng=jax.random.key(seed)).tokens
  np.testing.assert_array_equal(run(1), run(1))
  assert not np.array_equal(run(1), run(2))


def test_top_p_keeps_the_smallest_set_reaching_p():
  logits = jnp.log(jnp.tile(jnp.array([[0.05, 0.6, 0.3, 0.05]]), (2000, 1)))
  drawn = lambda p: set(np.asarray(decode.sample(logits, jax.random.key(0), 1.0, p)).tolist())
  assert drawn(0.5) == {1}
  assert drawn(0.85) == {1, 2}
  assert drawn(1.0) == {0, 1, 2, 3}


def test_batch_of_different_prompts_equals_each_alone():
  model = make("delta")
  a = np.asarray(tokens(1, 2 * SEG + 3, seed=8))[0]
  b = np.asarray(tokens(1, SEG + 6, seed=9))[0]
  both = decode.generate(model, [a, b], 2 * SEG, return_logits=True)
  for i, prompt in enumerate((a, b)):
    alone = decode.generate(model, [prompt], 2 * SEG, return_logits=True)
    np.testing.assert_array_equal(both.tokens[i], alone.tokens[0])
    np.testing.assert_allclose(both.logits[i], alone.logits[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-1.0), "temperature=-1.0 must be >= 0"),
    (dict(top_p=0.0), "top_p=0.0 must be in"),
    (dict(temperature=1.0), "pass rng="),
    (dict(lengths=[0]), "lengths"),
])
def test_invalid_arguments_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    decode.generate(make("linear"), tokens(1, 4), 3, **kwargs)

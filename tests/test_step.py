"""The train step: masked loss and z-loss against numpy, exact gradient accumulation, chunked loss."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from infini_jax.training import optim, step
from infini_jax import sharding
from infini_jax.model import ModelConfig

CFG = ModelConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                  mlp_dim=64, segment_len=8)


def batch(seed=0, b=4, t=32):
  tokens = np.asarray(jax.random.randint(jax.random.key(seed), (b, t + 1), 0, 64))
  mask = (np.random.default_rng(seed).random((b, t)) > 0.3).astype(np.float32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask}


def build(accum=1, z_loss=0.0, tx=None, cfg=CFG, loss_chunk=0, **options):
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  tx = tx or optim.make_optimizer(optim.OptimizerConfig(learning_rate=1e-2, warmup_steps=0))
  with sharding.activate(mesh, sharding.DEFAULT_RULES):
    return step.build(cfg, tx, mesh, sharding.DEFAULT_RULES, 4, 32, z_loss=z_loss,
                      grad_accum_steps=accum, loss_chunk=loss_chunk, **options)


def sgd_gradients(fns, data):
  """(gradient, metrics) of one step from init: with SGD at rate 1 the update is -gradient."""
  state = fns.init(jax.random.key(0))
  init = jax.tree.map(np.array, state["params"])
  new, metrics = fns.train(state, data)
  return jax.tree.map(lambda n, o: o - np.asarray(n), new["params"], init), metrics


def test_loss_and_z_loss_match_numpy_from_logits():
  fns = build(z_loss=1e-3)
  state = fns.init(jax.random.key(0))
  data = batch()
  logits, _ = nnx.merge(fns.graphdef, state["params"])(jnp.asarray(data["inputs"]))
  logits = np.asarray(logits, np.float64)
  log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  nll = log_z - np.take_along_axis(logits, data["targets"][..., None], -1)[..., 0]
  mask = data["loss_mask"]
  per_segment = fns.eval(state["params"], data)
  np.testing.assert_allclose(per_segment["nll"], (nll * mask).reshape(4, 4, 8).sum((0, 2)),
                             rtol=1e-4)
  _, metrics = fns.train(state, data)          # donates state: nothing reads it afterwards
  np.testing.assert_allclose(metrics["loss"], (nll * mask).sum() / mask.sum(), rtol=1e-5)
  np.testing.assert_allclose(metrics["z_loss"], (log_z ** 2 * mask).sum() / mask.sum(), rtol=1e-5)


def test_accumulated_micro_batches_equal_one_step_on_the_whole_batch():
  # With SGD the update is -gradient: the accumulated gradient is compared directly (Adam's
  # first step, g / |g|, would magnify rounding in near-zero gradients).
  data = batch(seed=1)
  results = []
  for accum in (1, 2, 4):
    grads, metrics = sgd_gradients(build(accum, tx=optax.sgd(1.0)), data)
    results.append((grads, metrics["loss"]))
  assert max(float(np.abs(g).max()) for g in jax.tree.leaves(results[0][0])) > 1e-3
  for grads, loss in results[1:]:
    np.testing.assert_allclose(loss, results[0][1], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 grads, results[0][0])


def test_memory_weight_two_writes_a_segment_as_if_it_came_twice():
  # One layer: keys and values depend on the token alone, so weight 2 on segment 0 must give
  # the later segments exactly the losses of the sequence with segment 0 repeated.
  cfg = ModelConfig(vocab_size=64, num_layers=1, d_model=32, num_heads=4, num_kv_heads=2,
                    mlp_dim=64, segment_len=8)
  model = step.InfiniTransformer(cfg, rngs=nnx.Rngs(0))
  data = batch(seed=2)
  weight = np.ones_like(data["loss_mask"])
  weight[:, :8] = 2.0
  weighted = step.loss_sums(model, data, jnp.asarray(weight))["nll"]
  twice = {k: np.concatenate([v[:, :8], v], 1) for k, v in data.items()}
  repeated = step.loss_sums(model, twice)["nll"]
  plain = step.loss_sums(model, data)["nll"]
  np.testing.assert_allclose(weighted[1:], repeated[2:], rtol=1e-5)
  assert float(np.abs(np.asarray(weighted[1:]) - np.asarray(plain[1:])).max()) > 1e-3


def test_train_reads_memory_weight_and_eval_ignores_it():
  fns = build()
  state = fns.init(jax.random.key(0))
  data = batch(seed=3)
  # Every write scaled by 3: sigma(q) M / sigma(q) z is unchanged in every layer (linear rule).
  uniform = dict(data, memory_weight=np.full(data["loss_mask"].shape, 3.0, np.float32))
  skewed = dict(data, memory_weight=np.where(np.arange(32) < 8, 1.0, 5.0).astype(np.float32)
                * np.ones((4, 1), np.float32))
  np.testing.assert_array_equal(fns.eval(state["params"], skewed)["nll"],
                                fns.eval(state["params"], data)["nll"])
  losses = [float(fns.train(jax.tree.map(jnp.copy, state), d)[1]["loss"])
            for d in (data, uniform, skewed)]
  np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
  assert abs(losses[2] - losses[0]) > 1e-4


@pytest.mark.parametrize("tied", [False, True])
def test_chunked_loss_step_equals_whole_logits_step(tied):
  cfg = dataclasses.replace(CFG, tie_embeddings=tied)
  data = batch(seed=4)
  whole, whole_metrics = sgd_gradients(build(z_loss=1e-2, tx=optax.sgd(1.0), cfg=cfg), data)
  chunked_fns = build(z_loss=1e-2, tx=optax.sgd(1.0), cfg=cfg, loss_chunk=2)
  chunked, chunked_metrics = sgd_gradients(chunked_fns, data)
  unembedding = whole["embed"]["embedding"] if tied else whole["unembed"]
  assert float(np.abs(unembedding).max()) > 1e-3
  for key in ("loss", "z_loss"):
    np.testing.assert_allclose(chunked_metrics[key], whole_metrics[key], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), chunked, whole)
  params = chunked_fns.init(jax.random.key(0))["params"]
  np.testing.assert_allclose(chunked_fns.eval(params, data)["nll"],
                             build(cfg=cfg).eval(params, data)["nll"], rtol=1e-6)


def test_loss_chunk_must_divide_the_segment():
  with pytest.raises(ValueError, match="loss chunk 3 does not divide the segment length 8"):
    build(loss_chunk=3)


def test_knocked_out_weights_drop_whole_sequences_drawn_by_seed_and_step():
  weight = np.random.default_rng(0).uniform(0.5, 2.0, (256, 16)).astype(np.float32)
  drawn = np.asarray(step.knocked_out_weights(jnp.asarray(weight), 0.25, 0, jnp.int32(7)))
  dropped = (drawn == 0).all(1)
  np.testing.assert_array_equal(drawn[~dropped], weight[~dropped])   # kept rows untouched
  assert 32 <= dropped.sum() <= 96                 # about a quarter of 256 (binomial sd 7)
  again = np.asarray(step.knocked_out_weights(jnp.asarray(weight), 0.25, 0, jnp.int32(7)))
  np.testing.assert_array_equal(again, drawn)      # a resumed run draws the same rows
  for seed, at in ((0, 8), (1, 7)):
    other = np.asarray(step.knocked_out_weights(jnp.asarray(weight), 0.25, seed, jnp.int32(at)))
    assert ((other == 0).all(1) != dropped).any()
  for rate, kept in ((0.0, weight), (1.0, np.zeros_like(weight))):
    np.testing.assert_array_equal(
        step.knocked_out_weights(jnp.asarray(weight), rate, 0, jnp.int32(7)), kept)


def test_memory_knockout_trains_the_chosen_sequences_with_an_empty_memory():
  data = batch(seed=5)
  mask = data["loss_mask"]
  written = np.asarray(step.knocked_out_weights(jnp.ones((4, 32)), 0.5, 1, jnp.int32(0)))
  rows = written[:, 0] > 0
  assert rows.any() and not rows.all()             # seed 1 knocks out some rows, not all
  fns = build(memory_knockout=0.5, seed=1)
  model = nnx.merge(fns.graphdef, fns.init(jax.random.key(0))["params"])
  per_row = {}   # each row's summed NLL with its memory written, and never written
  for name, weight in (("written", None), ("empty", jnp.zeros((1, 32)))):
    per_row[name] = np.array([
        float(step.loss_sums(model, {k: v[i:i + 1] for k, v in data.items()}, weight)["nll"].sum())
        for i in range(4)])
  assert np.abs(per_row["written"] - per_row["empty"]).min() > 1e-3   # the memory matters
  expected = np.where(rows, per_row["written"], per_row["empty"]).sum() / mask.sum()
  for rate, want in ((0.5, expected), (1.0, per_row["empty"].sum() / mask.sum()),
                     (0.0, per_row["written"].sum() / mask.sum())):
    fns = build(memory_knockout=rate, seed=1)
    _, metrics = fns.train(fns.init(jax.random.key(0)), data)
    np.testing.assert_allclose(metrics["loss"], want, rtol=1e-5)


WINDOW = dataclasses.replace(CFG, local_context="two_segments", previous_len=4)


def test_kept_windows_drop_segments_drawn_by_seed_and_step_apart_from_the_knockout():
  kept = np.asarray(step.kept_windows(64, 16, 0.25, 0, jnp.int32(7)))
  assert kept.shape == (64, 16) and kept.dtype == bool
  assert 200 <= (~kept).sum() <= 312               # about a quarter of 1024 (binomial sd 14)
  np.testing.assert_array_equal(step.kept_windows(64, 16, 0.25, 0, jnp.int32(7)), kept)
  for seed, at in ((0, 8), (1, 7)):
    assert (np.asarray(step.kept_windows(64, 16, 0.25, seed, jnp.int32(at))) != kept).any()
  # Not the knock-out's draw: its rows at the same seed and step are not the first column's.
  knocked = np.asarray(step.knocked_out_weights(jnp.ones((64, 1)), 0.25, 0, jnp.int32(7)))[:, 0]
  assert ((knocked == 0) != ~kept[:, 0]).any()
  assert np.asarray(step.kept_windows(4, 4, 0.0, 0, jnp.int32(0))).all()
  assert not np.asarray(step.kept_windows(4, 4, 1.0, 0, jnp.int32(0))).any()


@pytest.mark.parametrize("memory", ["infini", "xl"])
def test_a_dropped_window_is_a_segment_start_without_the_previous_segment(memory):
  cfg = WINDOW if memory == "infini" else dataclasses.replace(CFG, memory="xl", previous_len=4)
  data = batch(seed=3)
  params = build(cfg=cfg).init(jax.random.key(0))["params"]

  def per_segment(cfg, keep=None):   # [segments] NLL of row 0
    model = nnx.merge(step.abstract_model(cfg)[0], params)
    row = {k: v[:1] for k, v in data.items()}
    if keep is not None:
      row["window_keep"] = jnp.asarray([keep])
    return np.asarray(step.loss_sums(model, row)["nll"])

  full = per_segment(cfg)
  np.testing.assert_array_equal(per_segment(cfg, [True] * 4), full)
  # Without any window the model is, parameter for parameter, one whose local attention sees
  # its own segment alone (the other code path: no carried keys at all).
  alone = dataclasses.replace(cfg, local_context="segment", previous_len=None,
                              memory="none" if memory == "xl" else memory)
  np.testing.assert_allclose(per_segment(cfg, [False] * 4), per_segment(alone), rtol=1e-5)
  dropped = per_segment(cfg, [True, True, False, True])
  np.testing.assert_array_equal(dropped[:2], full[:2])          # earlier segments untouched
  assert abs(dropped[2] - full[2]) > 1e-3                        # segment 3 lost its window


def test_window_drop_trains_the_drawn_segments_without_the_previous_one():
  data = batch(seed=5)
  mask = data["loss_mask"].sum()
  fns = build(cfg=WINDOW)
  model = nnx.merge(fns.graphdef, fns.init(jax.random.key(0))["params"])
  keep = step.kept_windows(4, 4, 0.5, 1, jnp.int32(0))
  assert np.asarray(keep)[:, 1:].any() and not np.asarray(keep)[:, 1:].all()
  for rate, keep in ((0.5, keep), (1.0, jnp.zeros((4, 4), bool)), (0.0, None)):
    fed = data if keep is None else dict(data, window_keep=keep)
    want = float(step.loss_sums(model, fed)["nll"].sum()) / mask
    fns = build(cfg=WINDOW, window_drop=rate, seed=1)
    _, metrics = fns.train(fns.init(jax.random.key(0)), data)
    np.testing.assert_allclose(metrics["loss"], want, rtol=1e-5)

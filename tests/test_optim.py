"""The optimizer: schedules against their formulas, gate rates, decay masks, clipping, accumulation
and config errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from infini_jax import trees
from infini_jax.training import optim

PEAK = 1e-2


def cfg(**overrides):
  base = dict(learning_rate=PEAK, warmup_steps=0, schedule="constant", weight_decay=0.0,
              clip_norm=None, gate_lr_multiplier=1.0)
  return optim.OptimizerConfig(**{**base, **overrides})


def toy_params():
  """Shaped like the model's: stacked layers [layers, ...], gates [layers, heads]."""
  return {"blocks": {"attn": {"beta": jnp.zeros((2, 4)), "w_q": jnp.full((2, 8, 4), 0.5)},
                     "attn_norm": {"scale": jnp.ones((2, 8))}},
          "embed": {"embedding": jnp.full((16, 8), 0.5)}}


def one_update(config, grads, params):
  tx = optim.make_optimizer(config)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  return updates


@pytest.mark.parametrize("schedule", ["cosine", "linear", "rsqrt", "constant"])
def test_schedules_follow_their_formulas(schedule):
  warmup, total, end = 10, 110, 0.1
  lr = optim.make_schedule(cfg(schedule=schedule, warmup_steps=warmup, total_steps=total,
                               end_lr_fraction=end))

  def expected(t):
    if t < warmup:
      return PEAK * t / warmup
    progress = min((t - warmup) / (total - warmup), 1.0)
    return {"cosine": PEAK * (end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress))),
            "linear": PEAK * (1 - (1 - end) * progress),
            "rsqrt": PEAK * math.sqrt(warmup / t),
            "constant": PEAK}[schedule]

  for t in [0, 1, 5, 9, 10, 11, 35, 60, 109, 110, 500]:
    np.testing.assert_allclose(float(lr(t)), expected(t), rtol=1e-5, atol=1e-9, err_msg=f"step {t}")
  assert float(lr(warmup)) == pytest.approx(PEAK)
  if schedule in ("cosine", "linear"):
    assert float(lr(total)) == pytest.approx(PEAK * end)


def test_no_warmup_starts_at_the_peak_and_short_runs_still_warm_up():
  lr = optim.make_schedule(cfg(schedule="cosine", total_steps=50))
  assert float(lr(0)) == pytest.approx(PEAK)
  lr = optim.make_schedule(cfg(schedule="cosine", warmup_steps=30, total_steps=3))  # a smoke test
  assert float(lr(2)) == pytest.approx(PEAK * 2 / 30)


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_gate_learning_rate_is_multiplied(name):
  params = toy_params()
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
  plain = one_update(cfg(name=name), grads, params)
  boosted = one_update(cfg(name=name, gate_lr_multiplier=100.0), grads, params)
  gate, weight = boosted["blocks"]["attn"]["beta"], boosted["blocks"]["attn"]["w_q"]
  if name == "adamw":   # equal gradients, so equal Adam directions: only the rates differ
    np.testing.assert_allclose(gate, 100.0 * weight[:, 0, :], rtol=1e-5)
  np.testing.assert_allclose(gate, 100.0 * plain["blocks"]["attn"]["beta"], rtol=1e-5)
  np.testing.assert_allclose(weight, plain["blocks"]["attn"]["w_q"], rtol=1e-6)
  assert float(jnp.abs(gate).min()) > 0.1 * PEAK * 100   # Adafactor too: a gate at 0 moves


def test_weight_decay_only_on_kernels_and_embeddings():
  params = toy_params()
  params["blocks"]["attn"]["beta"] = jnp.full((2, 4), 2.0)   # a gate away from 0: decay would show
  zero = jax.tree.map(jnp.zeros_like, params)
  updates = one_update(cfg(weight_decay=0.1, gate_lr_multiplier=100.0), zero, params)
  assert not np.any(updates["blocks"]["attn"]["beta"])
  assert not np.any(updates["blocks"]["attn_norm"]["scale"])
  np.testing.assert_allclose(updates["blocks"]["attn"]["w_q"], -PEAK * 0.1 * 0.5, rtol=1e-6)
  np.testing.assert_allclose(updates["embed"]["embedding"], -PEAK * 0.1 * 0.5, rtol=1e-6)


def test_biases_get_no_weight_decay():
  # Qwen2's q/k/v biases, [layers, heads, head_dim]: exempt like the norms (README: "biases").
  params = toy_params()
  params["blocks"]["attn"] |= {f"b_{p}": jnp.full((2, 4, 2), 0.5) for p in "qkv"}
  zero = jax.tree.map(jnp.zeros_like, params)
  updates = one_update(cfg(weight_decay=0.1), zero, params)
  for p in "qkv":
    assert not np.any(updates["blocks"]["attn"][f"b_{p}"]), p
  np.testing.assert_allclose(updates["blocks"]["attn"]["w_q"], -PEAK * 0.1 * 0.5, rtol=1e-6)


def model_params(**model):
  from infini_jax.training import step
  from infini_jax.model import ModelConfig
  return step.abstract_model(ModelConfig(**model))[1]


def test_default_masks_on_the_real_models_parameters():
  params = model_params(qkv_bias=True)
  names = [trees.path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  exempt = {n for n, decay in zip(names, jax.tree.leaves(
      optim.decay_mask(params, optim.OptimizerConfig().no_decay_patterns))) if not decay}
  assert exempt == {"blocks/attn/b_q", "blocks/attn/b_k", "blocks/attn/b_v", "blocks/attn/beta",
                    "blocks/attn_norm/scale", "blocks/mlp_norm/scale", "final_norm/scale"}
  gates = [n for n, g in zip(names, jax.tree.leaves(optim.gate_mask(params, "beta"))) if g]
  assert gates == ["blocks/attn/beta"]


@pytest.mark.parametrize("model", [{}, {"qkv_bias": True}, {"memory": "none"},
                                   {"memory": "none", "qkv_bias": True}])
def test_default_patterns_pass_on_every_model(model):
  # A model without biases or gates is no error for the defaults, which name kinds of parameters.
  optim.check_patterns(optim.OptimizerConfig(), model_params(**model))
  optim.check_patterns(optim.OptimizerConfig(no_decay_patterns=["norm", "embed"]),
                       model_params(**model))


@pytest.mark.parametrize("key, value, pattern", [
    ("gate_pattern", "betta", "'betta'"),
    ("no_decay_patterns", ("norm", "nrom"), "'nrom'"),
    ("no_decay_patterns", ("norm", "bias"), "'bias'"),   # our biases are named b_q, b_k, b_v
])
def test_a_pattern_that_matches_nothing_is_an_error(key, value, pattern):
  with pytest.raises(ValueError) as error:
    optim.make_optimizer(optim.OptimizerConfig(**{key: value}), model_params())
  message = str(error.value)
  assert f"optimizer.{key}: {pattern} matches no parameter of the model" in message
  assert "they are blocks/attn/beta, blocks/attn/w_k, " in message and "unembed" in message
  assert f"(gin: OptimizerConfig.{key})" in message


def test_train_checks_the_patterns_before_compiling(tmp_path):
  from infini_jax import inputs
  from infini_jax.training import trainer as train
  from infini_jax.model import ModelConfig
  from infini_jax.run import RunConfig
  data = inputs.SyntheticData(batch_size=2, seq_len=32, segment_len=16)
  with pytest.raises(ValueError, match="optimizer.gate_pattern: 'gates' matches no parameter"):
    train.train(RunConfig(model=ModelConfig(segment_len=16), data=data, model_dir=str(tmp_path),
                          steps=1, optimizer=optim.OptimizerConfig(gate_pattern="gates")))


def test_masks_by_path_work_on_nnx_state():
  from flax import nnx

  class Tiny(nnx.Module):
    def __init__(self):
      self.beta = nnx.Param(jnp.zeros(3))
      self.norm = nnx.Param(jnp.ones(3))
      self.kernel = nnx.Param(jnp.ones((3, 3)))

  state = nnx.state(Tiny(), nnx.Param)
  gates = optim.gate_mask(state, "beta$")   # the Variable's ".value" is not part of the name
  decays = optim.decay_mask(state, ("norm", "beta"))
  assert jax.tree.leaves(gates) == [True, False, False]        # beta, kernel, norm (sorted)
  assert jax.tree.leaves(decays) == [False, True, False]


def test_clipping_bounds_the_update():
  # With a huge eps, Adam's first step is SGD at rate lr / eps: the update shows the gradient size.
  params = {"w": jnp.zeros(4), "v": jnp.zeros((2, 2))}
  huge = {"w": jnp.array([300.0, -400.0, 0.0, 0.0]), "v": jnp.zeros((2, 2))}   # global norm 500
  small = jax.tree.map(lambda g: g / 1000.0, huge)                             # global norm 0.5
  sgd = dict(eps=1e9)
  norm = lambda tree: float(optax.tree.norm(tree))
  rate = PEAK / 1e9
  size = lambda clip_norm, grads: norm(one_update(cfg(clip_norm=clip_norm, **sgd), grads, params))
  assert size(None, huge) == pytest.approx(500 * rate, rel=1e-4)
  assert size(1.0, huge) == pytest.approx(1.0 * rate, rel=1e-4)
  assert size(1.0, small) == pytest.approx(0.5 * rate, rel=1e-4)


def test_adafactor_on_1d_2d_3d_leaves():
  params = {"norm": {"scale": jnp.ones(64)}, "kernel": jnp.full((256, 128), 0.02),
            "stacked": jnp.full((2, 128, 256), 0.02), "beta": jnp.zeros((2, 4))}
  tx = optim.make_optimizer(optim.OptimizerConfig(name="adafactor", warmup_steps=0))
  state = tx.init(params)
  update = jax.jit(tx.update)
  for i in range(3):
    grads = jax.tree.map(lambda p, i=i: jnp.sin(jnp.arange(p.size, dtype=jnp.float32) + i)
                         .reshape(p.shape), params)
    updates, state = update(grads, state, params)
    params = jax.tree.map(jnp.add, params, updates)
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    assert bool(jnp.all(jnp.isfinite(leaf))), path
  # Second moments of the big 2-D and 3-D leaves are factored: rows + columns, not a full copy.
  sizes = sum(x.size for x in jax.tree.leaves(state))
  assert sizes < sum(x.size for x in jax.tree.leaves(params))


@pytest.mark.parametrize("key, value, message", [
    ("name", "adam", 'optimizer.name="adam" is not one of adamw, adafactor'),
    ("schedule", "exp", 'optimizer.schedule="exp" is not one of cosine, linear, rsqrt, constant'),
    ("learning_rate", -1.0, "optimizer.learning_rate=-1.0 must be > 0"),
    ("warmup_steps", -5, "optimizer.warmup_steps=-5 must be an integer >= 0"),
    ("end_lr_fraction", 2.0, "optimizer.end_lr_fraction=2.0 must be in [0, 1]"),
    ("b2", 1.0, "optimizer.b2=1.0 must be in [0, 1)"),
    ("clip_norm", 0.0, "optimizer.clip_norm=0.0 must be > 0 or None"),
    ("gate_lr_multiplier", 0.0, "optimizer.gate_lr_multiplier=0.0 must be > 0"),
    ("gate_pattern", "beta(", "optimizer.gate_pattern: 'beta(' is not a regular expression"),
    ("no_decay_patterns", "norm", "optimizer.no_decay_patterns='norm' must be a tuple"),
])
def test_bad_values_name_the_key(key, value, message):
  with pytest.raises(ValueError) as error:
    optim.OptimizerConfig(**{key: value})
  assert message in str(error.value)
  assert f"OptimizerConfig.{key}" in str(error.value)


def test_gin_lists_become_tuples():
  config = optim.OptimizerConfig(no_decay_patterns=["norm", "beta"])
  assert config.no_decay_patterns == ("norm", "beta")
  hash(config)

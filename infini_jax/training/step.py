"""The train and eval steps as pure functions of ``(state, batch)``, and the sharded train state.

The state is a plain dict ``{"params", "opt_state", "step"}`` whose params are the model's nested
dict of arrays (``nnx.to_pure_dict``), so checkpoints do not depend on Flax object layouts. The loss
is computed segment by segment inside the segment scan: the logits of a whole long sequence are
never materialised, and with ``loss_chunk`` not even those of a whole segment (loss.py).
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from infini_jax import loss, sharding
from infini_jax.errors import UserError
from infini_jax.model import InfiniTransformer, ModelConfig, scan_segments

# "inputs", "targets" int32 [batch, seq]; "loss_mask" float32 [batch, seq]; optionally
# "memory_weight" float32 [batch, seq], each token's weight in the memory writes of training
# (passkey dilution, data/passkey.py); evaluation ignores it and reads the text as it is. The
# train step may add "window_keep" bool [batch, segments] (``train.window_drop``).
Batch = dict
BATCH_DTYPES = {"inputs": jnp.int32, "targets": jnp.int32, "loss_mask": jnp.float32,
                "memory_weight": jnp.float32}


def loss_sums(model: InfiniTransformer, batch: Batch, write_weight: jax.Array | None = None,
              chunk: int = 0) -> dict:
  """Per-segment sums ``[segments]`` of the masked NLL, of log Z^2 (z-loss) and of the weights.

  ``write_weight [batch, seq]``: each token's weight in the memory writes (None: ones).
  ``batch["window_keep"] [batch, segments]`` (optional, bool): which segments see the previous
  one (``scan_segments``).
  ``chunk``: positions of a segment whose logits are computed at a time (0: the whole segment;
  see ``loss.cross_entropy_sums``).
  """

  def head(model, h, extras):
    targets, mask = extras
    with jax.named_scope("loss"):
      return loss.cross_entropy_sums(h, model.unembedding(), targets, mask, chunk)

  outputs, _ = scan_segments(model, batch["inputs"], None, head,
                             (batch["targets"], batch["loss_mask"]), write_weight,
                             batch.get("window_keep"))
  return outputs


@dataclasses.dataclass(frozen=True)
class StepFns:
  """The jitted functions of one run, with the shardings they were built for."""
  init: Callable[[jax.Array], dict]
  init_opt: Callable[[dict], Any]
  train: Callable[[dict, Batch], tuple[dict, dict]]
  eval: Callable[[dict, Batch], dict]   # (params, batch) -> per-segment sums
  state_shardings: Any
  abstract_state: Any
  abstract_batch: Batch   # the batch our pipelines feed, as ShapeDtypeStructs (for AOT compiles)
  batch_sharding: Any
  graphdef: Any


def abstract_model(cfg: ModelConfig):
  """(graphdef, abstract nnx.State of the parameters) without allocating them."""
  model = nnx.eval_shape(lambda: InfiniTransformer(cfg, rngs=nnx.Rngs(0)))
  return nnx.split(model, nnx.Param)


def step_key(seed: int, step: jax.Array) -> jax.Array:
  """The key of a training step's draws: from ``seed`` and ``step`` alone, so a resumed run draws
  what the interrupted one would have."""
  return jax.random.fold_in(jax.random.key(seed), step)


def knocked_out_weights(memory_weight: jax.Array, rate: float, seed: int,
                        step: jax.Array) -> jax.Array:
  """``memory_weight [batch, seq]`` with the rows of about ``rate`` of the sequences set to 0:
  their memory is never written (a knock-out in training). Which rows is drawn from
  :func:`step_key`."""
  written = jax.random.bernoulli(step_key(seed, step), 1.0 - rate, memory_weight.shape[:1])
  return memory_weight * written[:, None].astype(memory_weight.dtype)


def kept_windows(batch: int, segments: int, rate: float, seed: int,
                 step: jax.Array) -> jax.Array:
  """``[batch, segments]`` bool: False for about ``rate`` of the segments, which then do not see
  the previous segment (a drop of the carried window in training; the first segment has none
  to see). Drawn from :func:`step_key`, apart from :func:`knocked_out_weights`'."""
  key = jax.random.fold_in(step_key(seed, step), 1)
  return jax.random.bernoulli(key, 1.0 - rate, (batch, segments))


def build(cfg: ModelConfig, tx: optax.GradientTransformation, mesh, rules, global_batch: int,
          seq_len: int, *, z_loss: float = 0.0, grad_accum_steps: int = 1, loss_chunk: int = 0,
          schedule: Callable | None = None, memory_knockout: float = 0.0,
          window_drop: float = 0.0, seed: int = 0) -> StepFns:
  """Builds the sharded, jitted init/train/eval functions for one configuration.

  ``loss_chunk``: segment positions whose float32 logits are computed at a time, in the forward
  and the backward pass (0: the whole segment); a divisor of ``cfg.segment_len``.
  ``memory_knockout``: the fraction of each step's sequences whose memory is never written
  (:func:`knocked_out_weights` with ``seed``); 0: off.
  ``window_drop``: the fraction of each step's segments that do not see the previous segment
  (:func:`kept_windows` with ``seed``), for a model that carries it; 0: off.
  """
  segments = cfg.num_segments(seq_len)
  loss.check_chunk(loss_chunk, cfg.segment_len)
  if global_batch % grad_accum_steps:
    raise UserError(f"global batch {global_batch} is not divisible by grad_accum_steps="
                    f"{grad_accum_steps}; change train.grad_accum_steps or the batch size")
  graphdef, abstract_params = abstract_model(cfg)
  params_shardings = sharding.param_shardings(abstract_params, mesh, rules)
  abstract_pure = nnx.to_pure_dict(abstract_params)
  abstract_opt = jax.eval_shape(tx.init, abstract_pure)
  state_shardings = {
      "params": params_shardings,
      "opt_state": sharding.follow_params(abstract_opt, abstract_pure, params_shardings, mesh),
      "step": sharding.replicated(mesh),
  }
  batch_sharding = sharding.batch_sharding(mesh, rules, global_batch)
  metric_sharding = sharding.replicated(mesh)

  def init(key):
    model = InfiniTransformer(cfg, rngs=nnx.Rngs(params=key))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}

  def sums_and_grads(params, batch):
    def objective(params):
      sums = jax.tree.map(jnp.sum, loss_sums(nnx.merge(graphdef, params), batch,
                                             batch.get("memory_weight"), loss_chunk))
      return sums["nll"] + z_loss * sums["z"], sums
    return jax.grad(objective, has_aux=True)(params)

  def train(state, batch):
    params = state["params"]
    if memory_knockout:
      weight = batch.get("memory_weight", jnp.ones_like(batch["loss_mask"]))
      batch = dict(batch, memory_weight=knocked_out_weights(weight, memory_knockout, seed,
                                                            state["step"]))
    if window_drop:
      batch = dict(batch, window_keep=kept_windows(global_batch, segments, window_drop, seed,
                                                   state["step"]))
    if grad_accum_steps == 1:
      grads, sums = sums_and_grads(params, batch)
    else:
      # Micro-batch k is rows k, k + K, k + 2K, ...: each device keeps its own rows (a contiguous
      # split would hand micro-batch k to a subset of the devices and reshard every micro-step).
      micro = jax.tree.map(
          lambda x: jnp.moveaxis(x.reshape(-1, grad_accum_steps, *x.shape[1:]), 1, 0), batch)

      def accumulate(acc, micro_batch):
        grads, sums = sums_and_grads(params, micro_batch)
        return jax.tree.map(jnp.add, acc, (grads, sums)), None

      zeros = jax.tree.map(jnp.zeros_like, (params, {"nll": 0.0, "z": 0.0, "weight": 0.0}))
      (grads, sums), _ = jax.lax.scan(accumulate, zeros, micro)
    # Gradients of sums over the whole global batch, divided once: exact for any accumulation.
    weight = jnp.maximum(sums["weight"], 1.0)
    grads = jax.tree.map(lambda g: g / weight, grads)
    with jax.named_scope("optimizer"):
      updates, opt_state = tx.update(grads, state["opt_state"], params)
      new_params = optax.apply_updates(params, updates)
    new_state = {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1}
    # param_norm is that of the new state, so a finite one vouches for the state a save writes.
    metrics = {"loss": sums["nll"] / weight, "z_loss": sums["z"] / weight,
               "loss_weight": sums["weight"], "grad_norm": optax.tree.norm(grads),
               "param_norm": optax.tree.norm(new_params)}
    if schedule is not None:
      metrics["learning_rate"] = schedule(state["step"])
    if cfg.memory == "infini":
      metrics["gates"] = jax.nn.sigmoid(params["blocks"]["attn"]["beta"])   # [layers, heads]
    return new_state, metrics

  def evaluate(params, batch):
    per_segment = loss_sums(nnx.merge(graphdef, params), batch, chunk=loss_chunk)
    return {"nll": per_segment["nll"], "weight": per_segment["weight"]}   # [segments] each

  return StepFns(
      init=jax.jit(init, out_shardings=state_shardings),
      init_opt=jax.jit(tx.init, out_shardings=state_shardings["opt_state"]),
      train=jax.jit(train, in_shardings=(state_shardings, batch_sharding),
                    out_shardings=(state_shardings, metric_sharding), donate_argnums=(0,)),
      eval=jax.jit(evaluate, in_shardings=(params_shardings, batch_sharding),
                   out_shardings=metric_sharding),
      state_shardings=state_shardings,
      abstract_state=jax.tree.map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
          jax.eval_shape(lambda: init(jax.random.key(0))), state_shardings),
      abstract_batch={k: jax.ShapeDtypeStruct((global_batch, seq_len), dtype,
                                              sharding=batch_sharding)
                      for k, dtype in BATCH_DTYPES.items()},
      batch_sharding=batch_sharding,
      graphdef=graphdef,
  )

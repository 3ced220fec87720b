"""Pretraining and continual pretraining: ``python -m infini_jax.train --gin_file=configs/tiny.gin``.

``train()`` takes plain keyword arguments; gin binds them at the command line (see cli.py). A run
writes into ``model_dir``: the operative gin config, orbax checkpoints (with the data position),
``metrics.jsonl`` and TensorBoard summaries. Started again, it resumes from the newest good
checkpoint and continues with the next unseen batch.
"""

import dataclasses
import logging
import os
import threading

import jax
import numpy as np

from infini_jax import checkpoint, distributed, divergence, flops, optim, paths, sharding, step
from infini_jax.data import state as data_state
from infini_jax.errors import UserError
from infini_jax.inputs import make_pipeline
from infini_jax.model import ModelConfig
from infini_jax.progress import Progress

log = logging.getLogger("infini_jax")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh sizes (one may be -1: all remaining devices) and the logical-axis rules."""
  data: int = 1
  fsdp: int = -1
  tensor: int = 1
  rules: tuple = sharding.DEFAULT_RULES

  def build(self):
    return sharding.make_mesh(self.data, self.fsdp, self.tensor)


def train(*, model: ModelConfig, optimizer: optim.OptimizerConfig, data, model_dir: str,
          steps: int, mesh: MeshConfig = MeshConfig(), seed: int = 0, z_loss: float = 0.0,
          grad_accum_steps: int = 1, loss_chunk: int = 0, checkpoint_every: int = 1000,
          keep_checkpoints: int = 3, keep_every: int | None = None, log_every: int = 10,
          eval_every: int = 0, eval_data=None, eval_batches: int = 8,
          init_from: str | None = None, peak_flops_per_device: float | None = None,
          on_divergence: str = "stop", spike_factor: float | None = None,
          spike_window: int = 100, max_rewinds: int = 3) -> dict:
  """Trains ``model`` for ``steps`` updates; returns the last logged train and eval scalars.

  Args:
    data: an ``infini_jax.data.DataConfig`` (seqio) or ``inputs.SyntheticData``; its
      ``batch_size`` is the global batch and ``seq_len`` the tokens per example.
    eval_data: the held-out data (e.g. the same DataConfig; its "validation" split is read);
      None: ``data``.
    init_from: continual pretraining: a checkpoint directory of another run (only its params are
      read; missing ones are initialised and listed), or "hf:DIR" for Hugging Face weights.
    loss_chunk: segment positions whose logits are computed at a time (0: the whole segment);
      with a big vocabulary, e.g. 512 keeps the float32 logits out of the largest temporaries.
    peak_flops_per_device: the chip's peak for MFU; None reads it from the device kind.
    on_divergence: when a step's loss, gradient norm or new parameters are not finite, or its
      loss spikes (``spike_factor`` times the mean of the last ``spike_window`` losses; None: no
      spike check): "stop" raises ``divergence.Diverged``; "rewind" restores the newest
      checkpoint and goes on with the data after the bad step (at most ``max_rewinds`` times).
      Either way no checkpoint ever holds a diverged state.
  """
  if on_divergence not in divergence.ACTIONS:
    raise UserError(f"train.on_divergence={on_divergence!r}; expected one of "
                    f"{', '.join(map(repr, divergence.ACTIONS))}")
  guard = divergence.Guard(spike_factor, spike_window)   # checks its settings before any work
  distributed.initialize()
  paths.makedirs(model_dir)
  if data.segment_len != model.segment_len:
    raise UserError(f"data segment_len {data.segment_len} differs from the model's "
                    f"{model.segment_len}; bind both to the macro SEGMENT_LEN")
  for name, value, least in (("steps", steps, 0), ("log_every", log_every, 1),
                             ("checkpoint_every", checkpoint_every, 1),
                             ("keep_checkpoints", keep_checkpoints, 1),
                             ("eval_every", eval_every, 0), ("eval_batches", eval_batches, 1)):
    if value < least:
      raise UserError(f"train.{name}={value} must be >= {least}; set --gin.train.{name}")
  tx = optim.make_optimizer(optimizer, step.abstract_model(model)[1])   # checks its patterns
  schedule = optim.make_schedule(optimizer)
  device_mesh = mesh.build()
  with sharding.activate(device_mesh, mesh.rules):
    fns = step.build(model, tx, device_mesh, mesh.rules, data.batch_size, data.seq_len,
                     z_loss=z_loss, grad_accum_steps=grad_accum_steps, loss_chunk=loss_chunk,
                     schedule=schedule)
    ckpt = checkpoint.Checkpointer(os.path.join(model_dir, "checkpoints"), checkpoint_every,
                                   keep_checkpoints, keep_every)
    restored = ckpt.restore(fns.abstract_state)
    if restored is not None:
      start, state, position = restored
      log.info("resuming from step %d (input state %s)", start, position)
    else:
      start, position = 0, 0
      if init_from:
        state = _continue_from(init_from, jax.random.key(seed), fns, model)
      else:
        state = fns.init(jax.random.key(seed))
    pipeline = make_pipeline(data, "train", model.vocab_size, position)
    progress = Progress(model_dir, steps, data.batch_size * data.seq_len,
                        (flops.train_flops_per_token(model, True),
                         flops.train_flops_per_token(model, False)),
                        flops.peak_flops_per_device(peak_flops_per_device))
    preemption = Preemption()
    last, rewinds = {}, 0
    try:
      pending = None   # metrics are read back one step late, so dispatch stays asynchronous
      current = start
      while current < steps:
        state, metrics = fns.train(state, pipeline.next_global(fns.batch_sharding))
        done = current + 1
        problem = _judge(guard, progress, *pending, log_every, steps, last) if pending else None
        pending = (done, metrics)
        preempted = preemption.reached(done)
        if problem is None and ckpt.due(done, force=preempted or done == steps):
          # The state about to be saved was made by this step: read its metrics now (the one
          # host sync of a save step) and save only a good state.
          problem = _judge(guard, progress, *pending, log_every, steps, last)
          pending = None
          if problem is None:
            ckpt.save(done, state, pipeline.state(), force=True)
        if problem is not None:
          at_step, reason = problem
          if on_divergence == "stop" or rewinds >= max_rewinds:
            progress.log_event(at_step, event="diverged", error=reason)
            raise divergence.Diverged(_stop_message(at_step, reason, ckpt, on_divergence,
                                                    rewinds))
          rewinds += 1
          state = pending = None    # frees the diverged state before the restore
          state, current = _rewind(ckpt, fns, pipeline, progress, at_step, reason, rewinds)
          continue
        if eval_every and done % eval_every == 0:
          last.update(evaluate(fns, state, eval_data or data, model.vocab_size, eval_batches,
                               progress, done))
        current = done
        if preempted:
          log.warning("preempted: saved step %d, exiting", done)
          progress.log_event(done, event="preempted")
          break
      if pending is not None and _judge(guard, progress, *pending, 1, steps, last):
        raise divergence.Diverged(f"step {pending[0]} diverged; it was not saved")
      if current == steps > start and eval_every and steps % eval_every:
        last.update(evaluate(fns, state, eval_data or data, model.vocab_size, eval_batches,
                             progress, steps))
    finally:
      ckpt.close()
      progress.close()
      preemption.close()
  return last


def _judge(guard: divergence.Guard, progress: Progress, at_step: int, metrics: dict,
           log_every: int, steps: int, last: dict):
  """Reads back the metrics of the step that produced ``at_step``; ``(at_step, reason)`` if that
  step diverged, else None (and the metrics are logged when due)."""
  host = jax.device_get(metrics)
  reason = guard.check(host)
  if reason is not None:
    log.warning("step %d diverged: %s", at_step, reason)
    return at_step, reason
  if at_step % log_every == 0 or at_step == steps:
    last.update(progress.log_train(at_step, host))
  return None


def _rewind(ckpt: checkpoint.Checkpointer, fns: step.StepFns, pipeline, progress: Progress,
            at_step: int, reason: str, count: int):
  """Restores the newest checkpoint (all are good: see the save step above); the batches
  consumed since it are skipped, not replayed. Returns ``(state, its step)``."""
  ckpt.wait()
  restored = ckpt.restore(fns.abstract_state)
  if restored is None:
    progress.log_event(at_step, event="diverged", error=reason)
    raise divergence.Diverged(f"step {at_step} diverged ({reason}) before the first checkpoint: "
                              f"nothing to rewind to. Lower the learning rate, or save earlier "
                              f"with train.checkpoint_every")
  good_step, state, position = restored
  skipped = pipeline.position - data_state.position_of(position, pipeline.cfg.batch_size)
  log.warning("rewind %d: step %d diverged (%s); back to step %d, skipping the %d batches "
              "consumed since", count, at_step, reason, good_step, skipped)
  progress.log_event(at_step, event="rewind", reason=reason, to_step=good_step,
                     skipped_batches=skipped, rewinds=count)
  return state, good_step


def _stop_message(at_step: int, reason: str, ckpt: checkpoint.Checkpointer, on_divergence: str,
                  rewinds: int) -> str:
  steps = ckpt.all_steps()
  kept = (f"the newest checkpoint, step {steps[-1]}, is good" if steps
          else "no checkpoint was saved")
  if on_divergence == "rewind":
    fix = f"it diverged again after {rewinds} rewinds (train.max_rewinds)"
  else:
    fix = "set train.on_divergence='rewind' to go back to the last checkpoint and skip the data"
  return (f"step {at_step} diverged: {reason}; {kept}. Lower the learning rate, clip gradients "
          f"(OptimizerConfig.clip_norm) or check the data; {fix}")


def evaluate(fns: step.StepFns, state, data, vocab_size: int, batches: int,
             progress: Progress | None = None, at_step: int = 0) -> dict:
  """Mean loss over ``batches`` batches of the held-out split (``state`` needs only "params")."""
  pipeline = make_pipeline(data, "validation", vocab_size)
  nll = weight = 0.0
  for _ in range(batches):
    try:
      batch = pipeline.next_global(fns.batch_sharding)
    except StopIteration:
      break
    sums = jax.device_get(fns.eval(state["params"], batch))
    nll, weight = nll + sums["nll"], weight + sums["weight"]
  totals = np.sum(nll), max(np.sum(weight), 1.0)
  scalars = {"eval_loss": float(totals[0] / totals[1])}
  if progress is not None:
    progress.log_eval(at_step, scalars)
  return scalars


def _continue_from(init_from: str, key: jax.Array, fns: step.StepFns, model_cfg) -> dict:
  """The train state at step 0 with the params of another run (or HF weights); the optimizer
  starts anew.

  Parameters the other run lacks get their fresh initialisation from ``key``. Only they are
  initialised, and no optimizer state exists until the new one is built: at the peak the devices
  hold one set of params and one optimizer state.
  """
  target = fns.abstract_state["params"]
  if init_from.startswith("hf:"):
    from infini_jax import convert
    loaded, report = convert.load_hf_params(init_from[3:], model_cfg, target)
  else:
    loaded, report = checkpoint.restore_params(init_from, target)
  for what in ("missing", "extra"):
    if report.get(what):
      log.warning("init_from %s: %s parameters %s", init_from, what, ", ".join(report[what]))
  if report.get("missing"):
    log.warning("the missing parameters keep their fresh initialisation (per the model config)")
  shardings = fns.state_shardings

  def start(key, loaded):
    fresh = fns.init(key)   # XLA drops what the outputs do not use: the optimizer state, ...
    return {"params": _overlay(fresh["params"], loaded), "step": fresh["step"]}

  # ... and the fresh values of the loaded params, which pass through donated, not copied.
  state = jax.jit(start, out_shardings={"params": shardings["params"], "step": shardings["step"]},
                  donate_argnums=1)(key, loaded)
  return {**state, "opt_state": fns.init_opt(state["params"])}


def _overlay(fresh: dict, loaded: dict) -> dict:
  """``fresh`` with every leaf that ``loaded`` has replaced by the loaded one."""
  return {k: (_overlay(v, loaded[k]) if isinstance(v, dict) else loaded[k]) if k in loaded else v
          for k, v in fresh.items()}


class Preemption:
  """Whether the run must save and stop at a step, after a SIGTERM reached any process.

  One process: our own SIGTERM handler sets a flag (installed from the main thread only). Several:
  JAX's preemption sync manager, which jax.distributed starts and which hears SIGTERM itself,
  names the same step on every process without a collective per step.
  """

  def __init__(self):
    self._flag = threading.Event()
    self._uninstall = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._uninstall = checkpoint.install_preemption_handler(self._flag.set)

  def reached(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self._flag.is_set()
    from jax.experimental import multihost_utils
    return multihost_utils.reached_preemption_sync_point(step)

  def close(self):
    if self._uninstall:
      self._uninstall()


def main(argv=None):
  from infini_jax import cli
  cli.run("train", argv)


if __name__ == "__main__":
  from infini_jax import command
  command.run(main)

"""The training loop of pretraining and continual pretraining (``python -m infini_jax.train``).

``train()`` takes a ``run.RunConfig``, which gin binds as ``train``. A run
writes into ``model_dir``: the operative gin config, orbax checkpoints (with the input state),
``metrics.jsonl`` and TensorBoard summaries. Started again, it resumes from the newest good
checkpoint and continues with the next unseen batch.
"""

import logging
import os
import re
import threading

import jax

from infini_jax import checkpoint, distributed, paths, trees
from infini_jax.data import state as data_state
from infini_jax.errors import UserError, check_matches
from infini_jax.evals import heldout
from infini_jax.inputs import make_pipeline
from infini_jax.run import RunConfig, build_run
from infini_jax.training import divergence, flops, step
from infini_jax.training.progress import Progress

log = logging.getLogger("infini_jax")


def train(config: RunConfig) -> dict:
  """Trains for ``config.steps`` updates; returns the last logged train and eval scalars."""
  c = config
  if not c.model_dir:
    raise UserError("train.model_dir is not set; pass --gin.MODEL_DIR=/path/to/run")
  distributed.initialize()
  paths.makedirs(c.model_dir)
  run = build_run(c)
  fns, model, data = run.fns, c.model, c.data
  guard = divergence.Guard(c.spike_factor, c.spike_window)
  with run.sharded():
    ckpt = checkpoint.Checkpointer(os.path.join(c.model_dir, "checkpoints"), c.checkpoint_every,
                                   c.keep_checkpoints, c.keep_every)
    restored = ckpt.restore(fns.abstract_state)
    if restored is not None:
      start, state, position = restored
      log.info("resuming from step %d (input state %s)", start, position)
    else:
      start, position = 0, 0
      if c.init_from:
        state = _continue_from(c.init_from, jax.random.key(c.seed), fns, model, c.init_fresh)
      else:
        state = fns.init(jax.random.key(c.seed))
    pipeline = make_pipeline(data, "train", model.vocab_size, position)
    progress = Progress(c.model_dir, c.steps, data.batch_size * data.seq_len,
                        (flops.train_flops_per_token(model, True),
                         flops.train_flops_per_token(model, False)),
                        flops.peak_flops_per_device(c.peak_flops_per_device))
    preemption = Preemption()
    last, rewinds = {}, 0
    try:
      pending = None   # metrics are read back one step late, so dispatch stays asynchronous
      current = start
      while current < c.steps:
        state, metrics = fns.train(state, pipeline.next_global(fns.batch_sharding))
        done = current + 1
        problem = _judge(guard, progress, *pending, c.log_every, c.steps, last) if pending else None
        pending = (done, metrics)
        preempted = preemption.reached(done)
        if problem is None and ckpt.due(done, force=preempted or done == c.steps):
          # The state about to be saved was made by this step: read its metrics now (the one
          # host sync of a save step) and save only a good state.
          problem = _judge(guard, progress, *pending, c.log_every, c.steps, last)
          pending = None
          if problem is None:
            ckpt.save(done, state, pipeline.state(), force=True)
        if problem is not None:
          at_step, reason = problem
          if c.on_divergence == "stop" or rewinds >= c.max_rewinds:
            progress.log_event(at_step, event="diverged", error=reason)
            raise divergence.Diverged(_stop_message(at_step, reason, ckpt, c.on_divergence,
                                                    rewinds))
          rewinds += 1
          state = pending = None    # frees the diverged state before the restore
          state, current = _rewind(ckpt, fns, pipeline, progress, at_step, reason, rewinds)
          continue
        if c.eval_every and done % c.eval_every == 0:
          last.update(heldout.evaluate(fns, state, c.held_out, model.vocab_size, c.eval_batches,
                               progress, done))
        current = done
        if preempted:
          log.warning("preempted: saved step %d, exiting", done)
          progress.log_event(done, event="preempted")
          break
      if pending is not None and _judge(guard, progress, *pending, 1, c.steps, last):
        raise divergence.Diverged(f"step {pending[0]} diverged; it was not saved")
      if current == c.steps > start and c.eval_every and c.steps % c.eval_every:
        last.update(heldout.evaluate(fns, state, c.held_out, model.vocab_size, c.eval_batches,
                             progress, c.steps))
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


def _continue_from(init_from: str, key: jax.Array, fns: step.StepFns, model_cfg,
                   fresh: tuple[str, ...] = ()) -> dict:
  """The train state at step 0 with the params of another run (or HF weights); the optimizer
  starts anew.

  Parameters the other run lacks, and those whose path matches a regex of ``fresh``
  (``train.init_fresh``), get their fresh initialisation from ``key``. Only they are initialised,
  and no optimizer state exists until the new one is built: at the peak the devices hold one set
  of params and one optimizer state.
  """
  target = fns.abstract_state["params"]
  if init_from.startswith("hf:"):
    from infini_jax.hf.llama import load_hf_params
    loaded, report = load_hf_params(init_from[3:], model_cfg, target)
  else:
    loaded, report = checkpoint.restore_params(init_from, target)
  for what in ("missing", "extra"):
    if report.get(what):
      log.warning("init_from %s: %s parameters %s", init_from, what, ", ".join(report[what]))
  if report.get("missing"):
    log.warning("the missing parameters keep their fresh initialisation (per the model config)")
  if fresh:
    loaded = _drop_matching(loaded, fresh, init_from)
  shardings = fns.state_shardings

  def start(key, loaded):
    fresh = fns.init(key)   # XLA drops what the outputs do not use: the optimizer state, ...
    return {"params": _overlay(fresh["params"], loaded), "step": fresh["step"]}

  # ... and the fresh values of the loaded params, which pass through donated, not copied.
  state = jax.jit(start, out_shardings={"params": shardings["params"], "step": shardings["step"]},
                  donate_argnums=1)(key, loaded)
  return {**state, "opt_state": fns.init_opt(state["params"])}


def _drop_matching(loaded: dict, patterns: tuple[str, ...], init_from: str) -> dict:
  """``loaded`` without the leaves whose '/'-joined path matches one of ``patterns``; a pattern
  that matches no loaded parameter raises UserError naming it and the parameters."""
  flat = {"/".join(k): (k, v) for k, v in trees.flatten(loaded).items()}
  for pattern in patterns:
    check_matches(pattern, sorted(flat), "train.init_fresh", f"loaded from {init_from}",
                  "fix --gin.train.init_fresh")
  dropped = sorted(n for n in flat if any(re.search(p, n) for p in patterns))
  log.warning("init_from %s: %s keep their fresh initialisation (train.init_fresh)", init_from,
              ", ".join(dropped))
  return trees.nest([kv for n, kv in flat.items() if n not in dropped])


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


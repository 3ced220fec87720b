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

from infini_jax import checkpoint, distributed, flops, optim, sharding, step
from infini_jax.errors import UserError
from infini_jax.inputs import make_pipeline
from infini_jax.model import ModelConfig
from infini_jax.progress import Progress

log = logging.getLogger("infini_jax")


class NonFiniteLoss(RuntimeError):
  """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


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
          grad_accum_steps: int = 1, checkpoint_every: int = 1000, keep_checkpoints: int = 3,
          keep_every: int | None = None, log_every: int = 10, eval_every: int = 0,
          eval_data=None, eval_batches: int = 8, init_from: str | None = None,
          peak_flops_per_device: float | None = None) -> dict:
  """Trains ``model`` for ``steps`` updates; returns the last logged train and eval scalars.

  Args:
    data: an ``infini_jax.data.DataConfig`` (seqio) or ``inputs.SyntheticData``; its
      ``batch_size`` is the global batch and ``seq_len`` the tokens per example.
    eval_data: the held-out data (e.g. the same DataConfig; its "validation" split is read);
      None: ``data``.
    init_from: continual pretraining: a checkpoint directory of another run (only its params are
      read; missing ones are initialised and listed), or "hf:DIR" for Hugging Face weights.
    peak_flops_per_device: the chip's peak for MFU; None reads it from the device kind.
  """
  distributed.initialize()
  os.makedirs(model_dir, exist_ok=True)
  if data.segment_len != model.segment_len:
    raise UserError(f"data segment_len {data.segment_len} differs from the model's "
                    f"{model.segment_len}; bind both to the macro SEGMENT_LEN")
  for name, value, least in (("steps", steps, 0), ("log_every", log_every, 1),
                             ("checkpoint_every", checkpoint_every, 1),
                             ("keep_checkpoints", keep_checkpoints, 1),
                             ("eval_every", eval_every, 0), ("eval_batches", eval_batches, 1)):
    if value < least:
      raise UserError(f"train.{name}={value} must be >= {least}; set --gin.train.{name}")
  tx = optim.make_optimizer(optimizer)
  schedule = optim.make_schedule(optimizer)
  device_mesh = mesh.build()
  with sharding.activate(device_mesh, mesh.rules):
    fns = step.build(model, tx, device_mesh, mesh.rules, data.batch_size, data.seq_len,
                     z_loss=z_loss, grad_accum_steps=grad_accum_steps, schedule=schedule)
    ckpt = checkpoint.Checkpointer(os.path.join(model_dir, "checkpoints"), checkpoint_every,
                                   keep_checkpoints, keep_every)
    restored = ckpt.restore(fns.abstract_state)
    if restored is not None:
      start, state, position = restored
      log.info("resuming from step %d (data position %d)", start, position)
    else:
      start, position = 0, 0
      state = fns.init(jax.random.key(seed))
      if init_from:
        state = _continue_from(init_from, state, fns, model)
    pipeline = make_pipeline(data, "train", model.vocab_size, position)
    progress = Progress(model_dir, steps, data.batch_size * data.seq_len,
                        (flops.train_flops_per_token(model, True),
                         flops.train_flops_per_token(model, False)),
                        flops.peak_flops_per_device(peak_flops_per_device))
    stop = threading.Event()
    uninstall = checkpoint.install_preemption_handler(stop.set) if _main_thread() else None
    last, preempted = {}, False
    try:
      pending = None   # metrics are read back one step late, so dispatch stays asynchronous
      for current in range(start, steps):
        state, metrics = fns.train(state, pipeline.next_global(fns.batch_sharding))
        if pending is not None:
          last.update(_report(progress, *pending, log_every, steps))
        pending = (current + 1, metrics)
        preempted = _agree(stop.is_set())
        ckpt.save(current + 1, state, pipeline.position, force=preempted)
        if eval_every and (current + 1) % eval_every == 0:
          last.update(evaluate(fns, state, eval_data or data, model.vocab_size, eval_batches,
                               progress, current + 1))
        if preempted:
          log.warning("preempted: saved step %d, exiting", current + 1)
          progress.log_event(current + 1, event="preempted")
          break
      if pending is not None:
        last.update(_report(progress, *pending, 1, steps))
      if not preempted and steps > start:
        ckpt.save(steps, state, pipeline.position, force=True)
        if eval_every and steps % eval_every:
          last.update(evaluate(fns, state, eval_data or data, model.vocab_size, eval_batches,
                               progress, steps))
    finally:
      ckpt.close()
      progress.close()
      if uninstall:
        uninstall()
  return last


def _report(progress: Progress, at_step: int, metrics: dict, log_every: int, steps: int) -> dict:
  host = jax.device_get(metrics)
  if not np.isfinite(host["loss"]):
    progress.log_event(at_step, event="failed", error="non-finite loss")
    raise NonFiniteLoss(f"loss is {host['loss']} at step {at_step}; the last good checkpoint "
                        f"is kept. Lower the learning rate or check the data.")
  if at_step % log_every == 0 or at_step == steps:
    return progress.log_train(at_step, host)
  return {}


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


def _continue_from(init_from: str, state: dict, fns: step.StepFns, model_cfg):
  """Replaces the fresh params by those of another run (or HF weights); the optimizer starts anew."""
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
  params = _overlay(state["params"], loaded)
  return {"params": params, "opt_state": fns.init_opt(params), "step": state["step"]}


def _overlay(fresh: dict, loaded: dict) -> dict:
  """``fresh`` with every leaf that ``loaded`` has replaced by the loaded one."""
  return {k: (_overlay(v, loaded[k]) if isinstance(v, dict) else loaded[k]) if k in loaded else v
          for k, v in fresh.items()}


def _agree(flag: bool) -> bool:
  """True on every process if it is True on any (a signal may reach only some hosts)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def _main_thread() -> bool:
  return threading.current_thread() is threading.main_thread()


def main(argv=None):
  from infini_jax import cli
  cli.run("train", argv)


if __name__ == "__main__":
  from infini_jax import command
  command.run(main)

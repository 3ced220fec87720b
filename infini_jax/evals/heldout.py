"""Held-out loss: during training (:func:`evaluate`) and of a run's newest good checkpoint
(:func:`evaluate_checkpoint`, ``python -m infini_jax.eval``), which restores only the parameters.
"""

import json
import os

import jax
import numpy as np

from infini_jax.evals import restore
from infini_jax.inputs import make_pipeline
from infini_jax.run import RunConfig, build_run
from infini_jax.training import step
from infini_jax.training.progress import Progress


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


def evaluate_checkpoint(config: RunConfig) -> dict:
  """The held-out loss of ``config.model_dir``'s newest good checkpoint (``eval_batches`` batches
  of ``config.held_out``), printed as one JSON line."""
  run = build_run(config)
  with run.sharded():
    params, report = restore.restore_params(os.path.join(config.model_dir, "checkpoints"),
                                            run.fns.abstract_state["params"])
    scalars = evaluate(run.fns, {"params": params}, config.held_out, config.model.vocab_size,
                       config.eval_batches)
  scalars["step"] = report["step"]
  print(json.dumps(scalars), flush=True)
  return scalars

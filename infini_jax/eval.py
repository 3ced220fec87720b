"""Held-out loss of a run's newest checkpoint: ``python -m infini_jax.eval`` with the train flags.

It reads the same gin files as the run (model, data, mesh, ``MODEL_DIR``), restores only the
parameters of the newest good checkpoint, and prints the loss on the validation split.
"""

import json
import logging
import os

from infini_jax import evaluation, optim, sharding, step
from infini_jax.train import MeshConfig, evaluate

log = logging.getLogger("infini_jax")


def run_from_train_bindings(bound: dict) -> dict:
  """Evaluates ``train.model_dir``'s newest checkpoint with the configuration bound to ``train``."""
  model, data, model_dir = bound["model"], bound["data"], bound["model_dir"]
  mesh_cfg = bound.get("mesh", MeshConfig())
  mesh = mesh_cfg.build()
  with sharding.activate(mesh, mesh_cfg.rules):
    tx = optim.make_optimizer(bound.get("optimizer", optim.OptimizerConfig()))
    fns = step.build(model, tx, mesh, mesh_cfg.rules, data.batch_size, data.seq_len)
    params, report = evaluation.restore_params(os.path.join(model_dir, "checkpoints"),
                                               fns.abstract_state["params"])
    scalars = evaluate(fns, {"params": params}, bound.get("eval_data") or data, model.vocab_size,
                       bound.get("eval_batches", 8))
  scalars["step"] = report["step"]
  print(json.dumps(scalars), flush=True)
  return scalars


def main(argv=None):
  from infini_jax import cli
  cli.run("eval", argv)


if __name__ == "__main__":
  from infini_jax import command
  command.run(main)

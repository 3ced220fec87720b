"""Held-out loss of a run's newest checkpoint: ``python -m infini_jax.eval`` with the train flags.

It reads the same gin files as the run (model, data, mesh, ``MODEL_DIR``), restores only the
parameters of the newest good checkpoint, and prints the loss on the validation split.
"""

import json
import logging
import os

from infini_jax import evaluation
from infini_jax.run import RunConfig, build_run
from infini_jax.train import evaluate

log = logging.getLogger("infini_jax")


def evaluate_checkpoint(config: RunConfig) -> dict:
  """The held-out loss of ``config.model_dir``'s newest good checkpoint (``eval_batches`` batches
  of ``config.held_out``), printed as one JSON line."""
  run = build_run(config)
  with run.sharded():
    params, report = evaluation.restore_params(os.path.join(config.model_dir, "checkpoints"),
                                               run.fns.abstract_state["params"])
    scalars = evaluate(run.fns, {"params": params}, config.held_out, config.model.vocab_size,
                       config.eval_batches)
  scalars["step"] = report["step"]
  print(json.dumps(scalars), flush=True)
  return scalars


def main(argv=None):
  from infini_jax import cli
  cli.run("eval", argv)


if __name__ == "__main__":
  from infini_jax import command
  command.run(main)

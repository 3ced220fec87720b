"""The gates sigmoid(beta) of a run: per layer and head (the paper's Figure 3), and over training.

    python scripts/plot_gates.py --checkpoint=runs/passkey_tiny
    python scripts/plot_gates.py --gin_file=configs/passkey_tiny.gin --out=/tmp/gates

Own flags (the rest are gin flags, as for the trainer; without ``--gin_file`` the run's
``config.gin`` next to ``--checkpoint`` is read):
  --checkpoint=DIR  a run directory, its checkpoints/ or one step (default MODEL_DIR's)
  --logdir=DIR      the run's TensorBoard logs, scalars gates/layer_L/head_H
                    (default RUN_DIR/tensorboard; skipped if absent)
  --out=DIR         where gates.png and gates_over_training.png go (default RUN_DIR/eval, next
                    to the run's checkpoints/)

A gate near 1 reads only the memory, near 0 only the local attention, near 0.5 mixes both.
"""

import os
import sys

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from infini_jax import checkpoint, paths, plots  # noqa: E402
from infini_jax.commands import entry, gin_flags, runs  # noqa: E402
from infini_jax.training import events, step  # noqa: E402

FLAGS = ("checkpoint", "logdir", "out")


def restore_gates(model_cfg, directory: str) -> tuple[np.ndarray, int]:
  """sigmoid(beta) ``[layers, heads]`` of a checkpoint (only beta is read) and its step."""
  if model_cfg.memory != "infini":
    raise gin_flags.ConfigError(f'the model has memory="{model_cfg.memory}": it has no gates '
                                '(only memory="infini" gates its memory)')
  _, abstract = step.abstract_model(model_cfg)
  beta = nnx.to_pure_dict(abstract)["blocks"]["attn"]["beta"]
  target = {"blocks": {"attn": {"beta": jax.ShapeDtypeStruct(beta.shape, beta.dtype)}}}
  params, report = checkpoint.restore_params(directory, target)
  if report["missing"]:
    raise ValueError(f"checkpoint {report['directory']} has no gates {report['missing']}")
  beta = np.asarray(params["blocks"]["attn"]["beta"], np.float64)
  return 1.0 / (1.0 + np.exp(-beta)), int(report["step"])


def read_gate_history(logdir: str, layers: int, heads: int) -> dict:
  """{(layer, head): (steps, values)} of the trainer's ``gates/layer_L/head_H`` scalars in the
  TensorBoard event files in ``logdir`` (read without TensorFlow, ``events.read_scalars``;
  a resumed run rewrites steps: the last one wins)."""
  tags = {events.gate_tag(l, h): (l, h) for l in range(layers) for h in range(heads)}
  curves = events.read_scalars(logdir, tags)
  return {tags[t]: (np.array(sorted(c)), np.array([c[s] for s in sorted(c)]))
          for t, c in curves.items()}


def plot_heat_map(gates: np.ndarray, path: str, title: str) -> None:
  plots.heat_map(gates, path, title, xticks=range(gates.shape[1]), yticks=range(gates.shape[0]),
                 xlabel="head", ylabel="layer", colorbar="sigmoid(beta): 0 local, 1 memory",
                 cmap="coolwarm", vmax=1, fmt=".2f")


def plot_history(history: dict, path: str, title: str) -> None:
  layers = sorted({layer for layer, _ in history})
  fig, axes = plots.pyplot().subplots(len(layers), 1, figsize=(7, 1.2 + 1.8 * len(layers)),
                                      sharex=True, squeeze=False)
  for ax, layer in zip(axes[:, 0], layers):
    for (l, head), (steps, values) in sorted(history.items()):
      if l == layer:
        ax.plot(steps, values, label=f"head {head}", linewidth=1)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"layer {layer}")
    ax.axhline(0.5, color="gray", linewidth=0.5, linestyle=":")
  axes[0, 0].set_title(title, fontsize=9)
  axes[0, 0].legend(fontsize=6, ncol=4, loc="upper left")
  axes[-1, 0].set_xlabel("step")
  plots.save(fig, path)


def main(argv=None) -> dict:
  argv = sys.argv[1:] if argv is None else argv
  own, rest = runs.split_own_flags(argv, FLAGS)
  gin_flags.setup_logging()
  checkpoint_flag = runs.last(own, "checkpoint")
  config = runs.parse_gin(rest, checkpoint_flag)
  directory = runs.checkpoint_dir(checkpoint_flag, config.model_dir)
  out = runs.last(own, "out") or runs.default_out(directory)
  paths.makedirs(out)
  written = {}
  gates, at_step = restore_gates(config.model, directory)
  written["heat_map_png"] = os.path.join(out, "gates.png")
  plot_heat_map(gates, written["heat_map_png"],
                f"gates sigmoid(beta) at step {at_step}\n{directory}")
  print(f"sigmoid(beta) at step {at_step} (rows: layers, columns: heads)")
  print("\n".join(" ".join(f"{g:.2f}" for g in row) for row in gates))
  run_dir = os.path.dirname(runs.default_out(directory))
  logdir = runs.last(own, "logdir") or os.path.join(run_dir, "tensorboard")
  history = read_gate_history(logdir, *gates.shape)
  if history:
    written["history_png"] = os.path.join(out, "gates_over_training.png")
    plot_history(history, written["history_png"], f"gates over training ({logdir})")
  else:
    print(f"no gate scalars under {logdir}; only the heat map is drawn")
  print("wrote " + " and ".join(written.values()), flush=True)
  return {"gates": gates, "step": at_step, "history": history, **written}


if __name__ == "__main__":
  entry.run(main)

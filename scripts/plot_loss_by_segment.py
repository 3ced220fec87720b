"""Held-out loss by segment index, one line per model, from ``eval_ppl``'s ``ppl.json`` files.

    python scripts/plot_loss_by_segment.py --out=runs/long_context/shakespeare/loss_by_segment.png \
        --train_segments=16 runs/long_context/shakespeare/*/eval/ppl.json

Every model of every file is one line (a model that several files hold, such as the
``memory="none"`` baseline, is drawn once), in bits per byte for the byte vocabulary, else bits
per token (``evals.ppl_report``); its knock-out (``eval_ppl --knockout``), where the file has one,
is the same colour dashed (not for ``memory="none"``, whose knock-out is itself). The files
must share the task and the unit. ``--by_offset`` plots the loss by offset within the segment
instead, over segments 2+ (where xl's previous segment, or a memory, can be read).

Own flags (the rest are the ppl.json files):
  --out=PATH            the PNG (default: loss_by_segment.png, or loss_by_offset.png, beside the
                        first file)
  --train_segments=N    a vertical line at the training length, N segments
  --by_offset           x is the offset within the segment, over segments 2+
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from infini_jax import paths, plots  # noqa: E402
from infini_jax.commands import entry  # noqa: E402
from infini_jax.evals import ppl_report  # noqa: E402


def read_lines(files, unit: str = "segment") -> tuple[dict, list]:
  """(the reports' shared {task, unit}, [(label, bits [segments], knocked-out bits or None)]);
  with ``unit="offset"`` bits ``[segment_len]`` by offset within segments 2+."""
  shared, models = ppl_report.read_reports(files)
  names = [model["name"] for model in models]
  lines = []
  for model in models:
    # The same name from two checkpoints (e.g. two corpora's runs at one step): say which.
    label = (f"{model['name']} ({model['checkpoint']})" if names.count(model["name"]) > 1
             else model["name"])
    knocked = ppl_report.knocked_out(model)
    lines.append((label, ppl_report.bits_per(model, unit),
                  ppl_report.bits_per(knocked, unit) if knocked else None))
  return shared, lines


def plot(shared: dict, lines: list, path: str, train_segments: int | None,
         unit: str = "segment") -> None:
  fig, ax = plots.pyplot().subplots(figsize=(8, 4.5))
  for i, (label, bits, knocked) in enumerate(lines):
    color = f"C{i % 10}"
    x = np.arange(1, len(bits) + 1)
    ax.plot(x, bits, color=color, linewidth=1.2, label=label)
    if knocked is not None:
      ax.plot(x, knocked, color=color, linewidth=1.0, linestyle="--",
              label=f"{label}, knock-out")
  if train_segments:
    ax.axvline(train_segments + 0.5, color="gray", linewidth=0.8, linestyle=":")
    ax.text(train_segments + 0.6, ax.get_ylim()[1], "training length", fontsize=7, va="top",
            color="gray")
  if unit == "offset":
    ax.set_xscale("log")
    ax.set_xlabel("offset within the segment (segments 2+)")
  else:
    ax.set_xlabel("segment of the window")
  ax.set_ylabel(shared["unit"])
  ax.set_title(f"held-out loss by {unit} ({shared['task']} validation)", fontsize=9)
  ax.legend(fontsize=7)
  plots.save(fig, path)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("files", nargs="+", help="ppl.json files of eval_ppl")
  parser.add_argument("--out", help="the PNG (default: loss_by_segment.png, or with --by_offset "
                                     "loss_by_offset.png, beside the first file)")
  parser.add_argument("--train_segments", type=int, help="training length in segments")
  parser.add_argument("--by_offset", action="store_true",
                      help="x is the offset within the segment, over segments 2+")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  unit = "offset" if args.by_offset else "segment"
  shared, lines = read_lines(args.files, unit)
  out = args.out or os.path.join(os.path.dirname(args.files[0]), f"loss_by_{unit}.png")
  paths.makedirs(os.path.dirname(out) or ".")
  plot(shared, lines, out, None if args.by_offset else args.train_segments, unit)
  print(f"wrote {out} ({len(lines)} models, {shared['unit']})", flush=True)
  return {"png": out, "labels": [label for label, _, _ in lines], **shared}


if __name__ == "__main__":
  entry.run(main)

"""One Markdown table of held-out bits by segment bucket from several ``eval_ppl`` ppl.json files.

    python scripts/ppl_table.py runs/long_context/pystdlib/*/eval/ppl.json

A row per model (named by its run folder; the baseline first), with its knock-out (``eval_ppl
--knockout``) in the row below where the file has one; a column per bucket
(``evals.ppl_report.BUCKETS`` and "all").
Each cell is the bucket's bits (per byte for the byte vocabulary, else per token) and, when one of
the files holds the ``memory="none"`` model of the windows' segment length, the change against it
in brackets. So models evaluated in separate ``eval_ppl`` runs compare in one table, provided
they read the same windows: the files must share the task, unit, segments and segment length, and
every model's token count per segment must agree (else the table is refused). ``--by_offset``:
a column per bucket of offsets within the segment over segments 2+
(``evals.ppl_report.OFFSETS``) instead; ``--first_segment``: the same offsets within segment 1.

Own flags (the rest are the ppl.json files):
  --out=PATH      also write the table there
  --by_offset     columns by offset within the segment (segments 2+)
  --first_segment columns by offset within segment 1
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from infini_jax import paths  # noqa: E402
from infini_jax.commands import entry  # noqa: E402
from infini_jax.errors import UserError  # noqa: E402
from infini_jax.evals import ppl_report  # noqa: E402


# Per unit of the table's columns: the label of a bucket's column and what the heading adds.
COLUMNS = {"segment": ("segment", ""), "offset": ("offset", ", segments 2+ by offset"),
           "first_offset": ("offset", ", segment 1 by offset")}


def run_name(checkpoint: str) -> str:
  """The run folder of a model's checkpoint path (``runs/x/checkpoints`` -> ``x``)."""
  parts = checkpoint.rstrip("/").split("/")
  return parts[-2] if parts[-1] == "checkpoints" and len(parts) > 1 else parts[-1]


def rows(files, unit: str = "segment") -> tuple[dict, list, str | None]:
  """(the files' shared {task, unit, segments, segment_len}, [(label, {bucket: bits or None},
  {bucket: change against none or None} or None)], the baseline's label or None); the buckets
  are ``ppl_report.BUCKETS``, or with ``unit="offset"`` or ``"first_offset"``
  ``ppl_report.OFFSETS``."""
  shared, models = ppl_report.read_reports(files, ("task", "unit", "segments", "segment_len"))
  first = models[0]
  for model in models[1:]:
    if not np.array_equal(model["tokens_per_segment"], first["tokens_per_segment"]):
      raise UserError(f"{model['name']} ({model['checkpoint']}) read other windows than "
                      f"{first['name']} ({first['checkpoint']}): its tokens per segment differ; "
                      "evaluate both with the same --segments, --batch_size and --batches")
  base = ppl_report.none_baseline(models, shared["segment_len"])
  if base is not None:   # the baseline's row first
    models = [base] + [model for model in models if model is not base]
  labels = [run_name(model["checkpoint"]) for model in models]
  labels = [model["checkpoint"] if labels.count(label) > 1 else label
            for label, model in zip(labels, models)]

  spans = ppl_report.BUCKETS if unit == "segment" else ppl_report.OFFSETS
  def buckets(result):
    return ppl_report.buckets(*ppl_report.sums_per(result, unit), spans)

  base_buckets = None if base is None else buckets(base)
  out = []
  for label, model in zip(labels, models):
    results = [(label, buckets(model), model is not base)]
    knocked = ppl_report.knocked_out(model)
    if knocked:
      results.append((f"{label} knock-out", buckets(knocked), True))
    for name, result, compare in results:
      change = (ppl_report.relative_change(result, base_buckets)
                if compare and base_buckets is not None else None)
      out.append((name, {k: None if v is None else v["bits"] for k, v in result.items()},
                  change))
  return shared, out, None if base is None else labels[0]


def markdown(shared: dict, table_rows: list, baseline: str | None, unit: str = "segment") -> str:
  """The rows as a Markdown table, with a line that says the unit and the baseline."""
  columns = list(table_rows[0][1])   # the buckets, then "all"
  column, heading = COLUMNS[unit]
  lines = [f"{shared['unit']} on {shared['task']} validation, {shared['segments']} segments of "
           f"{shared['segment_len']}" + heading
           + (f"; in brackets the change against {baseline}"
              if baseline else "; no memory=\"none\" baseline given"),
           "",
           "| model | " + " | ".join(c if c == "all" else f"{column} {c}" for c in columns) + " |",
           "|---|" + "---|" * len(columns)]
  for label, bits, change in table_rows:
    cells = []
    for column in columns:
      if bits[column] is None:
        cells.append("-")
      elif change is None or change[column] is None:
        cells.append(f"{bits[column]:.4f}")
      else:
        cells.append(f"{bits[column]:.4f} ({100 * change[column]:+.2f} %)")
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("files", nargs="+", help="ppl.json files of eval_ppl")
  parser.add_argument("--out", help="also write the table to this file")
  kind = parser.add_mutually_exclusive_group()
  kind.add_argument("--by_offset", action="store_true",
                    help="columns by offset within the segment (segments 2+)")
  kind.add_argument("--first_segment", action="store_true",
                    help="columns by offset within segment 1")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  unit = "offset" if args.by_offset else "first_offset" if args.first_segment else "segment"
  shared, table_rows, baseline = rows(args.files, unit)
  text = markdown(shared, table_rows, baseline, unit)
  print(text, flush=True)
  if args.out:
    paths.makedirs(os.path.dirname(args.out) or ".")
    paths.write_text(args.out, text + "\n")
  return {"rows": table_rows, "baseline": baseline, **shared}


if __name__ == "__main__":
  entry.run(main)

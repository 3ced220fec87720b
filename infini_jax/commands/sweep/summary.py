"""The results of a sweep: SWEEP_DIR/results.csv, results.md and loss_curves.png.

One row per run of SWEEP_DIR/sweep.json (plus any other run directory found there): its bindings,
status, last step, final train loss, final and best eval loss, median tokens/s, the final value of
every other metric an evaluation wrote to metrics.jsonl (``kind`` "eval" -> its key; another kind
K -> ``K_<key>``), ``passkey_accuracy`` (the mean of RUN_DIR/eval/passkey.json, written by
``python -m infini_jax.eval_passkey --checkpoint=RUN_DIR``), and the error of a failed run. Rows are
sorted by ``sort_by``: ascending, except for metrics named like accuracies, scores or tokens/s.
The loss curves come from each run's TensorBoard logs (``train/loss``, ``eval/eval_loss``), or from
metrics.jsonl where there are none.
"""

import csv
import io
import json
import math
import os
import re
import shlex
import socket

from infini_jax import paths, plots
from infini_jax.training import events

STANDARD = ("name", "status", "steps", "train_loss", "eval_loss", "best_eval_loss", "tokens_per_s")
DESCENDING = re.compile(r"acc|score|tokens_per_s|mfu", re.I)


def read_metrics(run_dir: str) -> list:
  """The records of run_dir/metrics.jsonl (a half-written last line is skipped)."""
  records = []
  try:
    with paths.open(os.path.join(run_dir, "metrics.jsonl")) as f:
      for line in f:
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError:
          pass
  except FileNotFoundError:
    pass
  return records


def read_status(run_dir: str) -> dict:
  try:
    with paths.open(os.path.join(run_dir, "status.json")) as f:
      return json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return {}


def last_train_step(records: list) -> int:
  return max((r["step"] for r in records if r.get("kind") == "train"), default=0)


def run_status(run_dir: str, steps: int | None) -> str:
  """finished | failed | running | preempted | interrupted | unfinished | pending.

  Only failed runs are not re-run by default; interrupted ones were killed by a signal.
  """
  status, records = read_status(run_dir), read_metrics(run_dir)
  if status.get("status") == "failed" or (records and records[-1].get("event") == "failed"):
    return "failed"
  if steps and last_train_step(records) >= steps:
    return "finished"
  if status.get("status") == "running" and not _alive(status):
    return "interrupted"
  if status.get("status") in ("running", "preempted", "interrupted"):
    return status["status"]
  if status.get("status") == "finished" and not steps:
    return "finished"
  return "unfinished" if status or records or paths.isdir(run_dir) else "pending"


def _alive(status: dict) -> bool:
  """Whether a "running" run's process still runs (unknowable for another host: assumed so)."""
  if status.get("host") != socket.gethostname() or "pid" not in status:
    return True
  try:
    os.kill(status["pid"], 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  return True


def collect(sweep_dir: str) -> tuple:
  """(rows, binding names): one dict per run."""
  try:
    with paths.open(os.path.join(sweep_dir, "sweep.json")) as f:
      meta = json.load(f)
  except FileNotFoundError:
    meta = {"runs": [], "bindings": []}
  planned = {r["name"]: r for r in meta["runs"]}
  others = sorted(d for d in paths.listdir(sweep_dir) if d not in planned
                  and paths.isfile(os.path.join(sweep_dir, d, "status.json")))
  rows = []
  for name in list(planned) + others:
    run_dir = os.path.join(sweep_dir, name)
    plan = planned.get(name, {"bindings": {}, "steps": None})
    records, status = read_metrics(run_dir), read_status(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval" and "eval_loss" in r]
    speeds = sorted(r["tokens_per_s"] for r in train if "tokens_per_s" in r)
    row = {"name": name, **plan["bindings"],
           "status": run_status(run_dir, plan["steps"]),
           "steps": last_train_step(records) or None,
           "train_loss": train[-1]["loss"] if train else None,
           "eval_loss": evals[-1]["eval_loss"] if evals else None,
           "best_eval_loss": min(r["eval_loss"] for r in evals) if evals else None,
           "tokens_per_s": speeds[len(speeds) // 2] if speeds else None}
    for r in records:   # every other evaluation: its last value
      kind = r.get("kind")
      if kind and kind != "train":
        for key, value in r.items():
          if key not in ("step", "kind", "eval_loss") and isinstance(value, (int, float)):
            row[key if kind == "eval" else f"{kind}_{key}"] = value
    row.update(_passkey(run_dir))
    if row["status"] == "failed":
      row["error"] = status.get("error") or next(
          (r.get("error") for r in reversed(records) if r.get("event") == "failed"), "")
    rows.append(row)
  return rows, meta.get("bindings", [])


def _passkey(run_dir: str) -> dict:
  """passkey_accuracy: the mean over the cells of eval/passkey.json (python -m
  infini_jax.eval_passkey --checkpoint=RUN_DIR writes it), if there is one."""
  try:
    with paths.open(os.path.join(run_dir, "eval", "passkey.json")) as f:
      cells = json.load(f)["accuracy"]
    flat = [float(v) for row in cells for v in (row if isinstance(row, list) else [row])]
    return {"passkey_accuracy": sum(flat) / len(flat)} if flat else {}
  except (OSError, ValueError, KeyError, TypeError):
    return {}


def sort_rows(rows: list, sort_by: str) -> list:
  sign = -1 if DESCENDING.search(sort_by) else 1

  def key(row):   # failed runs and runs without the metric last
    v = row.get(sort_by)
    ok = isinstance(v, (int, float)) and math.isfinite(v) and row["status"] != "failed"
    return (not ok, sign * v if ok else 0.0)
  return sorted(rows, key=key)


def summarize(sweep_dir: str, sort_by: str = "eval_loss") -> list:
  """Writes results.csv, results.md, loss_curves.png; prints the table and the best run's flags."""
  rows, bindings = collect(sweep_dir)
  if sort_by == "eval_loss" and not any(r.get("eval_loss") is not None for r in rows):
    sort_by = "train_loss"   # no run evaluates: the train loss is the next best thing
  rows = sort_rows(rows, sort_by)
  extras = sorted({k for r in rows for k in r} - set(STANDARD) - set(bindings) - {"error"})
  columns = [c for c in ["name", *bindings, *STANDARD[1:], *extras, "error"]
             if c in ("name", "status") or any(r.get(c) is not None for r in rows)]
  csv_text = io.StringIO()
  writer = csv.DictWriter(csv_text, columns)
  writer.writeheader()
  writer.writerows({c: r.get(c) for c in columns} for r in rows)
  paths.write_text(os.path.join(sweep_dir, "results.csv"), csv_text.getvalue())
  table = _markdown(rows, columns, sort_by)
  paths.write_text(os.path.join(sweep_dir, "results.md"),
                   f"# Sweep {paths.path(sweep_dir).name}\n\n"
                   f"Sorted by {sort_by}. Loss curves: loss_curves.png\n\n{table}\n")
  curves = {r["name"]: loss_curves(os.path.join(sweep_dir, r["name"])) for r in rows}
  plot(curves, os.path.join(sweep_dir, "loss_curves.png"))
  print(table)
  best = next((r for r in rows if r["status"] == "finished" and r.get(sort_by) is not None), None)
  if best is not None:
    flags = [shlex.quote(f"--gin.{b}={best[b]}") for b in bindings if b in best]
    print(f"\nbest by {sort_by} ({best[sort_by]:.4g}): {best['name']}\n  {' '.join(flags)}")
  print(f"\nwrote {sweep_dir}/results.csv, results.md, loss_curves.png")
  return rows


def _markdown(rows: list, columns: list, sort_by: str) -> str:
  def cell(v):
    if isinstance(v, float):
      return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    text = "" if v is None else str(v)
    return text.replace("|", "\\|").replace("\n", " ")[:120]
  head = [f"**{c}**" if c == sort_by else c for c in columns]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def loss_curves(run_dir: str) -> dict:
  """{"train/loss": {step: value}, "eval/eval_loss": {...}} from TensorBoard, else metrics.jsonl."""
  tags = ("train/loss", "eval/eval_loss")
  curves = events.read_scalars(os.path.join(run_dir, "tensorboard"), tags)
  if curves:
    return curves
  for r in read_metrics(run_dir):   # later lines win: a resumed run rewrites its steps
    if r.get("kind") == "train" and "loss" in r:
      curves.setdefault("train/loss", {})[r["step"]] = r["loss"]
    if r.get("kind") == "eval" and "eval_loss" in r:
      curves.setdefault("eval/eval_loss", {})[r["step"]] = r["eval_loss"]
  return curves


def plot(curves: dict, path: str) -> None:
  tags = [t for t in ("train/loss", "eval/eval_loss") if any(t in c for c in curves.values())]
  columns = max(len(tags), 1)
  fig, axes = plots.pyplot().subplots(1, columns, figsize=(6.5 * columns, 4.5), squeeze=False)
  for ax, tag in zip(axes[0], tags):
    for name, c in curves.items():
      if c.get(tag):
        steps = sorted(c[tag])
        ax.plot(steps, [c[tag][s] for s in steps], marker="." if len(steps) < 20 else None,
                label=name)
    ax.set(title=tag, xlabel="step", ylabel="loss")
    ax.grid(alpha=0.3)
  if tags:
    axes[0][-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
  plots.save(fig, path, dpi=100)

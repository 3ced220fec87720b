"""What ``eval_ppl`` reports: held-out loss in bits by segment bucket and by offset within the
segment, the knock-out beside each model and the change against the ``memory="none"`` model.
Plain numpy (no JAX), so the plot script (``scripts/plot_loss_by_segment.py``) reads ``ppl.json``
with it quickly.

Bits are nats / ln 2 per token. With the byte vocabulary a token is a byte (and each document's
EOS one more token), so the unit is bits per byte; with any other vocabulary it is bits per token
and is labelled so.
"""

import json
import math

import numpy as np

from infini_jax import paths
from infini_jax.errors import UserError

# (name, first segment, last segment or None), 1-based and inclusive. The experiment trains on
# 16 segments, so 17+ is beyond the training length.
BUCKETS = (("1", 1, 1), ("2-4", 2, 4), ("5-16", 5, 16), ("17+", 17, None))
# Offsets within the segment (1-based), over segments 2+: where the previous segment's last bytes
# matter (1-4), and where the segment's own context takes over.
OFFSETS = (("1-4", 1, 4), ("5-16", 5, 16), ("17-64", 17, 64), ("65+", 65, None))
# What a table's rows are: (row header, spans, result key of the buckets, result key of the
# change against none).
BY_SEGMENT = ("segments", BUCKETS, "buckets", "vs_none")
BY_OFFSET = ("offsets", OFFSETS, "offset_buckets", "offset_vs_none")
# The same offsets within segment 1 alone, where nothing before the window is there to read.
BY_FIRST_OFFSET = ("offsets", OFFSETS, "first_offset_buckets", "first_offset_vs_none")


def bits_unit(vocabulary: str) -> str:
  """"bits per byte" for the byte vocabulary (one token a byte), else "bits per token"."""
  return "bits per byte" if vocabulary == "byte" else "bits per token"


def buckets(nll, weight, spans=BUCKETS) -> dict:
  """{bucket: {tokens, loss, bits, ppl}} from per-segment sums ``nll``, ``weight`` ``[segments]``
  (with ``spans=OFFSETS``: per-offset sums ``[segment_len]``) and "all" (loss in nats per token,
  bits = loss / ln 2; None for buckets past the window)."""
  out = {}
  for name, first, last in spans + (("all", 1, None),):
    part = slice(first - 1, last)
    tokens = float(np.sum(weight[part]))
    if tokens == 0:
      out[name] = None
      continue
    loss = float(np.sum(nll[part]) / tokens)
    out[name] = {"tokens": tokens, "loss": loss, "bits": loss / math.log(2), "ppl": math.exp(loss)}
  return out


def read_reports(files, same=("task", "unit")) -> tuple[dict, list]:
  """({key: value} of the ``same`` keys, which every file must share; [each model's result, a
  model that several files hold (same name and checkpoint) once, first file first]) of several
  ``ppl.json`` files of ``eval_ppl``."""
  shared, seen = None, {}
  for path in files:
    try:
      report = json.loads(paths.read_text(path))
      this = {key: report[key] for key in same}
      models = report["models"]
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise UserError(f"{path}: not a ppl.json of eval_ppl ({type(e).__name__}: {e}); give the "
                      "files that `python -m infini_jax.eval_ppl --out=DIR` writes") from None
    if shared is None:
      shared = this
    elif this != shared:
      raise UserError(f"{path} is {this}, but {files[0]} is {shared}; give files of one task "
                      "and unit, evaluated on the same windows")
    for model in models:
      seen.setdefault((model["name"], model["checkpoint"]), model)
  return shared, list(seen.values())


def knocked_out(model: dict) -> dict | None:
  """A model's knock-out result (``eval_ppl --knockout``), or None where it has none or has no
  memory (``eval_ppl`` writes none for a ``memory="none"`` model; files written before it
  stopped doing so hold one that is the model itself)."""
  return model.get("knocked_out") if model.get("memory") != "none" else None


def sums_per(result: dict, unit: str = "segment") -> tuple[np.ndarray, np.ndarray]:
  """(nll, tokens): a model's result's sums ``[segments]`` of each segment, or with
  ``unit="offset"`` ``[segment_len]`` of each offset within segments 2+, or with
  ``unit="first_offset"`` of each offset within segment 1."""
  try:
    return (np.asarray(result[f"nll_per_{unit}"], np.float64),
            np.asarray(result[f"tokens_per_{unit}"], np.float64))
  except KeyError:
    raise UserError(f"a model's result in a ppl.json has no nll_per_{unit}: eval_ppl wrote the "
                    f"file before it summed by {unit}; evaluate the model again") from None


def bits_per(result: dict, unit: str = "segment") -> np.ndarray:
  """Bits per token of each of ``sums_per(result, unit)`` (NaN where no tokens)."""
  nll, tokens = sums_per(result, unit)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(tokens > 0, nll / np.where(tokens > 0, tokens, 1.0), np.nan) / math.log(2)


def none_baseline(results: list, segment_len: int):
  """The first result of a ``memory="none"`` model whose segments are ``segment_len`` (full
  attention, one long segment, is an upper bound, not this baseline), or None."""
  return next((r for r in results
               if r["memory"] == "none" and r["segment_len"] == segment_len), None)


def relative_change(ours: dict, base: dict) -> dict:
  """{bucket: (ours - base) / base} of the bits of two results' buckets (None where either has
  no tokens)."""
  return {name: None if ours[name] is None or base[name] is None
          else ours[name]["bits"] / base[name]["bits"] - 1.0 for name in ours}


def add_vs_none(results: list, segment_len: int) -> None:
  """Sets each result's ``vs_none``, ``offset_vs_none`` and ``first_offset_vs_none``: the
  ``relative_change`` of its ``buckets``, ``offset_buckets`` and ``first_offset_buckets`` against
  ``none_baseline``'s (None for the baseline itself, and for every result when there is no
  baseline)."""
  base = none_baseline(results, segment_len)
  for result in results:
    for _, _, key, change in (BY_SEGMENT, BY_OFFSET, BY_FIRST_OFFSET):
      result[change] = (None if base is None or result is base
                        else relative_change(result[key], base[key]))


def table(results: list, segment_len: int, unit: str, rows=BY_SEGMENT) -> str:
  """``rows`` (``BY_SEGMENT``: segment buckets; ``BY_OFFSET``: offsets within segments 2+;
  ``BY_FIRST_OFFSET``: offsets within segment 1) as
  rows; per model a column of ``unit``, its knock-out ("NAME ko", where a result has
  ``knocked_out`` buckets) and, where a result has ``vs_none`` (``add_vs_none``), its relative
  change against the ``memory="none"`` model of ``segment_len`` ("NAME vs none", in %)."""
  header, spans, key, change = rows
  base = none_baseline(results, segment_len)
  columns = []   # (header, {bucket: cell text})
  def number(column):
    return {k: "-" if v is None else f"{v['bits']:.4f}" for k, v in column.items()}
  for r in results:
    columns.append((r["name"], number(r[key])))
    if r.get("knocked_out"):
      columns.append((r["name"] + " ko", number(r["knocked_out"][key])))
    if r.get(change):
      columns.append((r["name"] + " vs none", {k: "-" if v is None else f"{100 * v:+.2f}%"
                                               for k, v in r[change].items()}))
  widths = [max(len(h), 10) for h, _ in columns]
  legend = f"{unit}; 'ko': the same windows with the memory never written"
  if base is not None:
    legend += f"; 'vs none': the change in {unit} relative to {base['name']}"
  lines = [legend,
           f"{header:>9} {'tokens':>10} " + " ".join(
               f"{h:>{w}}" for (h, _), w in zip(columns, widths))]
  for bucket in [b[0] for b in spans] + ["all"]:
    present = [r[key][bucket] for r in results if r[key][bucket] is not None]
    if not present:
      continue
    lines.append(f"{bucket:>9} {present[0]['tokens']:>10.0f} " + " ".join(
        f"{cells[bucket]:>{w}}" for (_, cells), w in zip(columns, widths)))
  return "\n".join(lines)

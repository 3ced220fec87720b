"""Held-out loss by position in the document: per-segment sums over windows of the validation
split, bucketed by segment index. The command is ``python -m infini_jax.eval_ppl``."""

import dataclasses
import math

import jax
import numpy as np
from flax import nnx

from infini_jax import sharding
from infini_jax.inputs import make_pipeline
from infini_jax.training import step

# (name, first segment, last segment or None), 1-based and inclusive.
BUCKETS = (("1", 1, 1), ("2-4", 2, 4), ("5-16", 5, 16), ("17+", 17, None))


def held_out_data(data_cfg, segments: int, batch_size: int | None):
  """The run's data config turned into windows of ``segments`` segments of its corpus."""
  changes = dict(seq_len=segments * data_cfg.segment_len, shuffle=False)
  if batch_size:
    changes["batch_size"] = batch_size
  if data_cfg.task.endswith("_passkey"):
    changes.update(task=data_cfg.task[:-len("_passkey")], passkey_rate=0.0)
  return dataclasses.replace(data_cfg, **changes)


def per_segment_sums(runs, data_cfg, vocab_size: int, max_batches: int | None):
  """Summed NLL and token counts ``[segments]`` of every run's model over the same held-out batches.

  ``runs``: :class:`restore.Loaded`; each model reads the batches sharded over its own mesh.
  """
  fns = []
  for run in runs:
    graphdef, params = nnx.split(run.model)
    batch_sharding = sharding.named_sharding(
        run.mesh, (data_cfg.batch_size, 1), ("batch", "seq"), run.rules,
        "the evaluation batch (--batch_size, default the run's)")
    loss = jax.jit(lambda p, b, g=graphdef: step.loss_sums(nnx.merge(g, p), b),
                   out_shardings=sharding.replicated(run.mesh))
    fns.append((loss, params, batch_sharding))
  pipeline = make_pipeline(data_cfg, "validation", vocab_size)
  totals = [{"nll": 0.0, "weight": 0.0} for _ in runs]
  batches = 0
  while max_batches is None or batches < max_batches:
    try:
      local = pipeline.next_local()
    except StopIteration:
      break
    for run, total, (loss, params, batch_sharding) in zip(runs, totals, fns):
      batch = {k: jax.make_array_from_process_local_data(batch_sharding, v)
               for k, v in local.items()}
      with run.sharded():
        sums = jax.device_get(loss(params, batch))
      total["nll"] = total["nll"] + np.asarray(sums["nll"], np.float64)
      total["weight"] = total["weight"] + np.asarray(sums["weight"], np.float64)
    batches += 1
  if not batches:
    raise ValueError(f"the validation split of task {data_cfg.task!r} is empty")
  return totals, batches


def buckets(nll, weight) -> dict:
  """{bucket: {tokens, loss, ppl}} from per-segment sums (None for buckets past the window)."""
  out = {}
  for name, first, last in BUCKETS + (("all", 1, None),):
    part = slice(first - 1, last)
    tokens = float(np.sum(weight[part]))
    if tokens == 0:
      out[name] = None
      continue
    loss = float(np.sum(nll[part]) / tokens)
    out[name] = {"tokens": tokens, "loss": loss, "ppl": math.exp(loss)}
  return out


def table(results: list) -> str:
  """Buckets as rows, one perplexity column per model."""
  names = [r["name"] for r in results]
  lines = [f"{'segments':>9} {'tokens':>10} " + " ".join(f"{n:>16}" for n in names)]
  for bucket in [b[0] for b in BUCKETS] + ["all"]:
    cells = [r["buckets"][bucket] for r in results]
    if all(c is None for c in cells):
      continue
    tokens = next(c["tokens"] for c in cells if c is not None)
    lines.append(f"{bucket:>9} {tokens:>10.0f} " + " ".join(
        f"{c['ppl']:>16.3f}" if c else f"{'-':>16}" for c in cells))
  return "\n".join(lines)


def model_name(model, step_number: int) -> str:
  cfg = model.cfg
  memory = "none" if cfg.memory == "none" else f"{cfg.memory}/{cfg.update_rule}"
  return f"{memory}@{step_number}"

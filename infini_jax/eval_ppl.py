"""Held-out perplexity by position in the document: ``python -m infini_jax.eval_ppl``.

    python -m infini_jax.eval_ppl --gin_file=configs/passkey_tiny.gin \\
        --baseline_gin_file=configs/passkey_tiny_none.gin

The validation split of the run's corpus (for a "<corpus>_passkey" mixture, the corpus alone) is
cut into windows of ``--segments`` segments, each read from an empty memory, and the loss is summed
per segment (``step.loss_sums``). Buckets: the first segment (local attention only, for every
model), segments 2-4, 5-16 and 17+ (where a memory can help most). With a baseline, both models
read the same windows and are printed side by side.

Own flags (the rest are gin flags, as for the trainer):
  --checkpoint=DIR            a run directory, its checkpoints/ or one step (default MODEL_DIR's)
  --segments=N                segments per window (default 32)
  --batch_size=N              windows per batch (default the run's batch size)
  --batches=N                 at most N batches (default: the whole split)
  --baseline_checkpoint=DIR   a second model, e.g. the memory="none" run; its config is
  --baseline_gin_file=F, --baseline_gin.NAME=VALUE   its own gin flags (default: the run's
                              config.gin next to --baseline_checkpoint, else the main gin files);
                              only its model and checkpoint are used, the data are the main run's
  --out=DIR                   where ppl.json goes (default RUN_DIR/eval, next to checkpoints/)
"""

import dataclasses
import json
import math
import os
import sys

import jax
import numpy as np
from flax import nnx

from infini_jax import cli, command, evaluation, paths, sharding, step
from infini_jax.inputs import make_pipeline

FLAGS = ("checkpoint", "segments", "batch_size", "batches", "baseline_checkpoint",
         "baseline_gin_file", "out")
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

  ``runs``: :class:`evaluation.Loaded`; each model reads the batches sharded over its own mesh.
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


def _name(model, step_number: int) -> str:
  cfg = model.cfg
  memory = "none" if cfg.memory == "none" else f"{cfg.memory}/{cfg.update_rule}"
  return f"{memory}@{step_number}"


def _baseline(argv, own, main_files):
  """(model, checkpoint dir, step) of the baseline, or None without --baseline_* flags."""
  gin_argv = [f"--gin.{a[len('--baseline_gin.'):]}" for a in argv
              if a.startswith("--baseline_gin.")]
  gin_argv += [f"--gin_file={f}" for f in own.get("baseline_gin_file", [])]
  checkpoint = evaluation.last(own, "baseline_checkpoint")
  if not gin_argv and checkpoint is None:
    return None
  files = cli.split_flags(gin_argv)[0]
  if not files and (checkpoint is None or evaluation.run_config(checkpoint) is None):
    gin_argv += [f"--gin_file={f}" for f in main_files]
  return evaluation.load(gin_argv, checkpoint)


def main(argv=None) -> dict:
  argv = sys.argv[1:] if argv is None else argv
  own, rest = evaluation.split_own_flags(argv, FLAGS)
  counts = {name: evaluation.parse_count(own[name][-1], f"--{name}") if name in own else default
            for name, default in (("segments", 32), ("batch_size", None), ("batches", None))}
  cli.setup_logging()
  rest_main = [a for a in rest if not a.startswith("--baseline_gin.")]
  loaded = evaluation.load(rest_main, evaluation.last(own, "checkpoint"))
  main_files = cli.split_flags(rest_main)[0] or [evaluation.run_config(loaded.checkpoint)]
  data_cfg = held_out_data(loaded.config.data, counts["segments"], counts["batch_size"])
  out = evaluation.last(own, "out") or evaluation.default_out(loaded.checkpoint)
  runs = [loaded]
  baseline = _baseline(rest, own, main_files)
  if baseline is not None:
    if baseline.model.cfg.segment_len != loaded.model.cfg.segment_len:
      raise cli.ConfigError(f"the baseline's segment_len {baseline.model.cfg.segment_len} differs "
                            f"from {loaded.model.cfg.segment_len}: the buckets would not compare")
    runs.append(baseline)
  vocab_size = max(r.model.cfg.vocab_size for r in runs)
  totals, batches = per_segment_sums(runs, data_cfg, vocab_size, counts["batches"])
  results = [dict(name=_name(r.model, r.step), checkpoint=r.checkpoint, step=r.step,
                  memory=r.model.cfg.memory, update_rule=r.model.cfg.update_rule,
                  nll_per_segment=t["nll"].tolist(), tokens_per_segment=t["weight"].tolist(),
                  buckets=buckets(t["nll"], t["weight"]))
             for r, t in zip(runs, totals)]
  report = dict(task=data_cfg.task, split="validation", segments=data_cfg.segments,
                segment_len=data_cfg.segment_len, batches=batches, models=results)
  paths.write_text(os.path.join(out, "ppl.json"), json.dumps(report, indent=1))
  print(f"held-out perplexity per token by segment of the window ({data_cfg.task} validation, "
        f"{batches} batches of {data_cfg.batch_size} x {data_cfg.segments} segments of "
        f"{data_cfg.segment_len} tokens)\n{table(results)}", flush=True)
  print(f"wrote {os.path.join(out, 'ppl.json')}", flush=True)
  return report


if __name__ == "__main__":
  command.run(main)

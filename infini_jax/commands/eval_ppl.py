"""Held-out loss by position in the document, in bits: ``python -m infini_jax.eval_ppl``.

    python -m infini_jax.eval_ppl --gin_file=configs/passkey_tiny.gin \\
        --baseline_gin_file=configs/passkey_tiny_none.gin

The validation split of the run's corpus (for a "<corpus>_passkey" mixture, the corpus alone) is cut
into windows of ``--segments`` segments, each read from an empty memory, and the loss is summed per
position of the window, then per segment and per offset within the segment. Buckets: the first
segment (local attention only, for every model), segments 2-4, 5-16 and 17+ (where a memory can help
most); and a second table over segments 2+ by offset within the segment, 1-4, 5-16, 17-64 and 65+
(what the previous segment's last bytes give, e.g. xl's exact keys and values, shows at the first
offsets; ``nll_per_offset``, ``tokens_per_offset`` and ``offset_buckets`` in the JSON); and a third
over segment 1 alone by the same offsets (where a model that learnt to lean on what came before
pays for its absence; ``nll_per_first_offset``, ``tokens_per_first_offset``,
``first_offset_buckets``). The table
gives bits per byte for the byte vocabulary (nats / ln 2 per byte token), else bits per token,
labelled so (``evals.ppl_report``). With a baseline, both models read the same windows and are
printed side by side; when one of them has ``memory="none"`` (and the main run's segment length),
the other's relative change against it is printed too ("NAME vs none") and written as ``vs_none``.
``scripts/plot_loss_by_segment.py`` plots the per-segment losses of several ``ppl.json`` files;
``scripts/ppl_table.py`` puts their models into one table against ``none``.

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
  --knockout                  also read the same windows with the memory never written (it stays
                              empty), printed beside each model ("NAME ko") and in the JSON
                              (``knocked_out`` of each model; null for memory="none", which has
                              no memory to knock out and is not read twice); memory="xl" then
                              carries nothing, local_context="two_segments" still its window of
                              the previous segment (the compressive memory alone is emptied)

Each model's state per sequence (``evals.state``: infini M and z, xl one segment of K/V per layer,
the segment's K/V cache) is printed and written as ``state_per_sequence``.
"""

import json
import os
import sys

from infini_jax import paths
from infini_jax.commands import gin_flags, runs
from infini_jax.evals import ppl, ppl_report, state

FLAGS = ("checkpoint", "segments", "batch_size", "batches", "baseline_checkpoint",
         "baseline_gin_file", "out")
SWITCHES = ("knockout",)


def _baseline(argv, own, main_files):
  """(model, checkpoint dir, step) of the baseline, or None without --baseline_* flags."""
  gin_argv = [f"--gin.{a[len('--baseline_gin.'):]}" for a in argv
              if a.startswith("--baseline_gin.")]
  gin_argv += [f"--gin_file={f}" for f in own.get("baseline_gin_file", [])]
  checkpoint = runs.last(own, "baseline_checkpoint")
  if not gin_argv and checkpoint is None:
    return None
  files = gin_flags.split_flags(gin_argv)[0]
  if not files and (checkpoint is None or runs.run_config(checkpoint) is None):
    gin_argv += [f"--gin_file={f}" for f in main_files]
  return runs.load(gin_argv, checkpoint)


def main(argv=None) -> dict:
  argv = sys.argv[1:] if argv is None else argv
  own, rest = runs.split_own_flags(argv, FLAGS, SWITCHES)
  counts = {name: runs.parse_count(own[name][-1], f"--{name}") if name in own else default
            for name, default in (("segments", 32), ("batch_size", None), ("batches", None))}
  gin_flags.setup_logging()
  rest_main = [a for a in rest if not a.startswith("--baseline_gin.")]
  loaded = runs.load(rest_main, runs.last(own, "checkpoint"))
  main_files = gin_flags.split_flags(rest_main)[0] or [runs.run_config(loaded.checkpoint)]
  data_cfg = ppl.held_out_data(loaded.config.data, counts["segments"], counts["batch_size"])
  out = runs.last(own, "out") or runs.default_out(loaded.checkpoint)
  models = [loaded]
  baseline = _baseline(rest, own, main_files)
  if baseline is not None:
    base_n, n = baseline.model.cfg.segment_len, loaded.model.cfg.segment_len
    if base_n % n:
      raise gin_flags.ConfigError(
          f"the baseline's segment_len {base_n} is not a multiple of the model's {n}: the buckets "
          f"are counted in the model's segments; give the model with the shorter segments first")
    if data_cfg.seq_len % base_n:
      raise gin_flags.ConfigError(
          f"the window of {data_cfg.segments} segments does not hold whole segments of the "
          f"baseline ({base_n} tokens); set --segments to a multiple of {base_n // n}")
    models.append(baseline)
  vocab_size = max(r.model.cfg.vocab_size for r in models)
  totals, batches = ppl.per_position_sums(models, data_cfg, vocab_size, counts["batches"])
  # A memory="none" model has no memory to knock out: its knock-out would be itself, read again.
  remembering = ["knockout" in own and r.model.cfg.memory != "none" for r in models]
  knocked = iter(ppl.per_position_sums([r for r, k in zip(models, remembering) if k], data_cfg,
                                      vocab_size, counts["batches"], knockout=True)[0]
                 if any(remembering) else ())
  knocked = [next(knocked) if k else None for k in remembering]

  def sums(t):
    n = data_cfg.segment_len
    nll, tokens = ppl.by_segment(t["nll"], n), ppl.by_segment(t["weight"], n)
    offset_nll, offset_tokens = ppl.by_offset(t["nll"], n), ppl.by_offset(t["weight"], n)
    first_nll, first_tokens = t["nll"][:n], t["weight"][:n]
    return dict(nll_per_segment=nll.tolist(), tokens_per_segment=tokens.tolist(),
                buckets=ppl_report.buckets(nll, tokens),
                nll_per_offset=offset_nll.tolist(), tokens_per_offset=offset_tokens.tolist(),
                offset_buckets=ppl_report.buckets(offset_nll, offset_tokens, ppl_report.OFFSETS),
                nll_per_first_offset=first_nll.tolist(),
                tokens_per_first_offset=first_tokens.tolist(),
                first_offset_buckets=ppl_report.buckets(first_nll, first_tokens,
                                                        ppl_report.OFFSETS))

  results = [dict(name=ppl.model_name(r.model, r.step, data_cfg.segment_len),
                  checkpoint=r.checkpoint, step=r.step,
                  memory=r.model.cfg.memory, update_rule=r.model.cfg.update_rule,
                  segment_len=r.model.cfg.segment_len,
                  state_per_sequence=state.state_per_sequence(r.model.cfg), **sums(t),
                  knocked_out=None if k is None else sums(k))
             for r, t, k in zip(models, totals, knocked)]
  ppl_report.add_vs_none(results, data_cfg.segment_len)
  unit = ppl_report.bits_unit(data_cfg.vocabulary)
  report = dict(task=data_cfg.task, split="validation", segments=data_cfg.segments,
                segment_len=data_cfg.segment_len, batches=batches, unit=unit, models=results)
  paths.write_text(os.path.join(out, "ppl.json"), json.dumps(report, indent=1))
  print(f"held-out {unit} by segment of the window ({data_cfg.task} validation, {batches} "
        f"batches of {data_cfg.batch_size} x {data_cfg.segments} segments of "
        f"{data_cfg.segment_len} tokens)\n"
        f"{ppl_report.table(results, data_cfg.segment_len, unit)}\n"
        f"the same, segments 2+ by offset within the segment\n"
        f"{ppl_report.table(results, data_cfg.segment_len, unit, ppl_report.BY_OFFSET)}\n"
        f"the same, segment 1 by offset\n"
        f"{ppl_report.table(results, data_cfg.segment_len, unit, ppl_report.BY_FIRST_OFFSET)}",
        flush=True)
  for r, result in zip(models, results):
    print(f"state per sequence of {result['name']}: {state.describe(r.model.cfg)}", flush=True)
  print(f"wrote {os.path.join(out, 'ppl.json')}", flush=True)
  return report

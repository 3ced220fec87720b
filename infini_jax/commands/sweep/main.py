"""``python -m infini_jax.sweep``: check every run's config, then run the plan (see the package
docstring)."""

import argparse
import json
import os
import shlex
import sys

from infini_jax import paths
from infini_jax.commands import gin_flags
from infini_jax.commands.gin_flags import ConfigError
from infini_jax.commands.sweep import summary
from infini_jax.commands.sweep.backends import run_local, run_slurm, run_tpu, train_command
from infini_jax.commands.sweep.plan import binding_flags, gin_literal, plan, read_sweep_file
from infini_jax.commands.sweep.records import record
from infini_jax.errors import UserError, one_line


def validate(runs: list, files: list, search_paths: list, base: list, sweep_dir: str) -> tuple:
  """Parses and builds every run's config; returns (the MODEL_DIR binding name, steps per run)."""
  import gin
  gin_flags.parse(files, search_paths, base)
  try:
    gin.query_parameter("%MODEL_DIR")
    dir_key = "MODEL_DIR"
  except ValueError:
    dir_key = "train.model_dir"
  steps = []
  for i, run in enumerate(runs, 1):
    label = f"sweep run {i}/{len(runs)} {run.name} ({' '.join(binding_flags(run.bindings))})"
    swept = [(f"sweep binding {name} = {gin_literal(value)}", f"{name} = {gin_literal(value)}")
             for name, value in run.bindings.items()]
    model_dir = os.path.join(sweep_dir, run.name)
    try:
      gin_flags.parse(files, search_paths,
                base + swept + [("", f"{dir_key} = {json.dumps(model_dir)}")])
      config = gin_flags.run_config()
    except UserError as e:
      raise ConfigError(f"{label}: {one_line(e)}") from None
    except Exception as e:   # a config's own validation (ValueError, TypeError, ...)
      raise ConfigError(f"{label}: {type(e).__name__}: {e}") from None
    steps.append(config.steps)
  gin.clear_config()
  return dir_key, steps


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m infini_jax.sweep", allow_abbrev=False,
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--sweep_file")
  p.add_argument("--sweep_dir", help="default: runs/sweeps/<sweep file name>")
  p.add_argument("--backend", choices=("local", "slurm", "tpu"), default="local")
  p.add_argument("--parallel", type=int, default=1, help="local runs at a time")
  p.add_argument("--devices", help="GPU ids to share among the local slots, e.g. 0,1,2,3")
  p.add_argument("--max_runs", type=int, help="start at most this many runs now")
  p.add_argument("--retry_failed", action="store_true")
  p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true")
  p.add_argument("--launcher_args", default="", help="extra flags for the slurm/tpu launcher")
  p.add_argument("--python", help="the Python of each command (default: this one; on a "
                 "cluster: python, of the .venv the launchers activate)")
  p.add_argument("--sort_by", default="eval_loss")
  p.add_argument("--summarize", metavar="SWEEP_DIR", help="only rebuild the summary of SWEEP_DIR")
  p.add_argument("--record", metavar="RUN_DIR", help=argparse.SUPPRESS)
  return p


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if "--" in argv and any(a.startswith("--record=") for a in argv[:argv.index("--")]):
    run_dir = argv[:argv.index("--")][0].split("=", 1)[1]
    return record(run_dir, argv[argv.index("--") + 1:], echo=True)
  files, search_paths, bindings, rest = gin_flags.split_flags(argv)
  args = _parser().parse_args(rest)
  gin_flags.setup_logging()
  if args.summarize:
    summary.summarize(args.summarize, args.sort_by)
    return 0
  if not files or not args.sweep_file:
    raise ConfigError("give --gin_file=... (the base config) and --sweep_file=...; or "
                      "--summarize SWEEP_DIR")
  spec = read_sweep_file(args.sweep_file)
  runs = plan(spec)
  stem = os.path.splitext(os.path.basename(args.sweep_file))[0]
  sweep_dir = args.sweep_dir or os.path.join("runs", "sweeps", stem)
  if args.backend == "slurm":   # the job runs in the repository root, on a shared filesystem
    if paths.is_bucket(sweep_dir):
      raise ConfigError(f"--sweep_dir={sweep_dir}: with --backend=slurm the sweep directory must "
                        f"be on the shared filesystem (sbatch reads its job array file)")
    sweep_dir = os.path.abspath(sweep_dir)
    files = [os.path.abspath(f) if os.path.isfile(f) else f for f in files]
  python = args.python or (sys.executable if args.backend == "local" else "python")
  dir_key, steps = validate(runs, files, search_paths, bindings, sweep_dir)
  print(f"[sweep] {len(runs)} runs ({spec['kind']}) in {sweep_dir}; every config checked",
        flush=True)

  base_flags = [flag for flag, _ in bindings]
  todo, skipped = [], []
  for run, n in zip(runs, steps):
    run_dir = os.path.join(sweep_dir, run.name)
    state = summary.run_status(run_dir, n)
    if state == "finished" or (state == "failed" and not args.retry_failed):
      skipped.append(f"{run.name} ({state})")
    else:
      todo.append((run, run_dir, train_command(python, files, search_paths, base_flags, run,
                                               dir_key, sweep_dir)))
  if skipped:
    print(f"[sweep] skipping {len(skipped)}: {', '.join(skipped)}", flush=True)
  if args.max_runs is not None:
    todo = todo[:args.max_runs]
  if not args.dry_run:
    paths.write_text(os.path.join(sweep_dir, "sweep.json"), json.dumps(
        {"kind": spec["kind"], "sweep_file": args.sweep_file, "gin_files": files,
         "gin_search_paths": search_paths, "gin_flags": base_flags, "sort_by": args.sort_by,
         "bindings": list(dict.fromkeys(k for r in runs for k in r.bindings)),
         "runs": [{"name": r.name, "bindings": {k: gin_literal(v) for k, v in r.bindings.items()},
                   "steps": n} for r, n in zip(runs, steps)]}, indent=1))
  launcher_args = shlex.split(args.launcher_args)
  if args.backend == "slurm":
    return run_slurm(todo, sweep_dir, python, launcher_args, args.dry_run)
  if args.backend == "tpu":
    codes = run_tpu(todo, python, launcher_args, args.dry_run)
  else:
    codes = run_local(todo, args.parallel, args.devices, args.dry_run)
  if not args.dry_run:
    summary.summarize(sweep_dir, args.sort_by)
  failed = sorted(name for name, rc in codes.items() if rc)
  if failed:
    print(f"[sweep] {len(failed)} failed: {', '.join(failed)} (see their status.json, train.log)")
  return 1 if failed else 0

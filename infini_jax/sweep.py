"""Sweeps of gin bindings: ``python -m infini_jax.sweep --gin_file=... --sweep_file=...``.

The sweep file is gin syntax, read with gin's own parser (comments, multi-line lists, literals):

    SWEEP_KIND = "grid"                      # grid (default) | random | list
    sweep.LEARNING_RATE = [1e-3, 3e-3]       # sweep.<any binding or macro> = [values]
    sweep.OptimizerConfig.gate_lr_multiplier = [1.0, 10.0]

- grid: the product of the value lists, the first binding varying slowest.
- random: ``SWEEP_SAMPLES = 8`` draws (``SWEEP_SEED = 0``, the default), each binding either from
  a list or from ``uniform(a, b)``, ``loguniform(a, b)`` (floats, rounded to 3 significant digits)
  or ``randint(a, b)`` (both ends included). The same seed gives the same runs.
- list: ``SWEEP_RUNS = [{"LEARNING_RATE": 1e-3}, {"LEARNING_RATE": 3e-3, "WARMUP_STEPS": 10}]``.
Scoped bindings: ``eval/sweep.DataConfig.split = [...]``. Values may be gin references (``@X()``)
and macros (``%X``).

Before anything runs, every run's full config is parsed afresh (the gin files, the ``--gin.``
flags, then the run's bindings) and built (``train``'s bindings resolved: ModelConfig etc.
validate themselves), and every config dataclass field and ``train`` argument is checked against
its type annotation (gin does no type checks). The first error stops the sweep, naming the run and
the binding.

Each run is named from its bindings (``LEARNING_RATE=0.001, WARMUP_STEPS=10`` ->
``lr1e-3_warmup10``) and trains into ``SWEEP_DIR/<name>`` (MODEL_DIR), with its operative
``config.gin``, ``train.log`` (its output) and ``status.json`` (running / finished / failed with the
error / preempted, the command and times). ``SWEEP_DIR/sweep.json`` holds the plan.

Backends (``--backend``):
- local (default): ``python -m infini_jax.train`` subprocesses, ``--parallel=K`` at a time. With
  GPUs (``--devices=0,1,2,3``; default: $CUDA_VISIBLE_DEVICES, else ``nvidia-smi -L``) each of the
  K slots gets its own ``len/K`` of them through CUDA_VISIBLE_DEVICES; on CPU each slot is pinned
  to its own share of the cores with ``taskset`` (its JAX sees the usual one CPU device, or what
  XLA_FLAGS says).
- slurm: one job array, a task per run, through ``scripts/launch_slurm.sh --array-file
  SWEEP_DIR/slurm_array.txt`` (``--launcher_args="--nodes 1 --time 4:00:00 ..."``); paths are
  made absolute, since the job runs in the repository root on a shared filesystem.
- tpu: one run after another through ``scripts/launch_tpu_pod.sh ... -- CMD``, which waits for
  each (``--launcher_args="--name N --zone Z --accelerator T"``); paths stay relative to the
  code directory on the workers, where the results are (summarize there).
``--sweep_dir`` defaults to runs/sweeps/<sweep file name>.
On a cluster each command is ``python -m infini_jax.sweep --record=RUN_DIR -- python -m
infini_jax.train ...`` (``python``: the .venv the launchers activate; ``--python=`` to change),
so the run itself writes status.json (process 0 only). ``--dry-run`` prints every command and
runs nothing (slurm: it writes the array file and calls the launcher with --dry-run).

Resuming: started again, a sweep skips runs whose metrics.jsonl reached train.steps, re-runs the
others (interrupted, preempted, never started; the trainer resumes from the newest checkpoint) and
skips failed ones unless ``--retry_failed``. A failed run (non-zero exit, e.g. NaN loss) is
recorded with its error line and does not stop the others; one killed by a signal (Ctrl-C) is
"interrupted", not failed.
``--max_runs=N`` starts at most N runs this time.

The summary (results.csv, results.md, loss_curves.png; see sweep_summary.py) is rebuilt after local
runs and by ``python -m infini_jax.sweep --summarize SWEEP_DIR [--sort_by=eval_loss]``.
"""

import argparse
import concurrent.futures
import dataclasses
import hashlib
import itertools
import json
import math
import os
import queue
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time

import numpy as np

from infini_jax import cli, command, paths, sweep_summary
from infini_jax.cli import ConfigError
from infini_jax.errors import UserError, one_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("grid", "random", "list")
SETTINGS = ("SWEEP_KIND", "SWEEP_SAMPLES", "SWEEP_SEED", "SWEEP_RUNS")
DISTRIBUTIONS = ("uniform", "loguniform", "randint")
# A train.log in a bucket is uploaded whole: at most this often while the run prints.
LOG_UPLOAD_S = 30.0
# Short names for run names; anything else is its last component, lower case.
ABBREVIATIONS = {"learning_rate": "lr", "warmup_steps": "warmup", "gate_lr_multiplier": "gate_lr",
                 "batch_size": "bs", "train_steps": "steps", "weight_decay": "wd"}


# ---------------------------------------------------------------------------------------------
# The sweep file

@dataclasses.dataclass(frozen=True)
class GinText:
  """A gin reference or macro in a sweep value (``@SyntheticData()``, ``%SEQ_LEN``), as text."""
  text: str


class _Delegate:
  def configurable_reference(self, scoped_name, evaluate):
    return GinText(f"@{scoped_name}{'()' if evaluate else ''}")

  def macro(self, name):
    return GinText(f"%{name}")


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  bindings: dict   # binding name -> Python value (or GinText)


def read_sweep_file(path: str) -> dict:
  """The settings and the swept bindings: {"kind", "axes": {name: list | (dist, a, b)}, ...}."""
  from gin import config_parser
  try:
    with open(path) as f:
      text = f.read()
  except OSError as e:
    raise ConfigError(f"--sweep_file={path}: {e.strerror}") from None
  # ``loguniform(a, b)`` is not a gin literal; it becomes the tuple ("loguniform", a, b).
  text = re.sub(r"(?<![\w.\"'])(" + "|".join(DISTRIBUTIONS) + r")\s*\(", r'("\1", ', text)
  settings, axes = {}, {}
  try:
    for st in config_parser.ConfigParser(text, _Delegate()):
      where = f"{path}:{st.location.line_num}"
      if not isinstance(st, config_parser.BindingStatement):
        raise ConfigError(f"{where}: only `sweep.NAME = [values]` and {', '.join(SETTINGS)} "
                          f"statements belong in a sweep file")
      head, _, rest = st.selector.partition(".")
      if not st.scope and not st.arg_name:
        if st.selector not in SETTINGS:
          raise ConfigError(f"{where}: unknown setting {st.selector}; the settings are "
                            f"{', '.join(SETTINGS)}, and bindings to vary are written "
                            f"sweep.{st.selector} = [values]")
        settings[st.selector] = st.value
      elif head == "sweep":
        name = ".".join(p for p in (rest, st.arg_name) if p)
        axes[f"{st.scope}/{name}" if st.scope else name] = _axis(st.value, where, name)
      else:
        raise ConfigError(f"{where}: write the bindings to vary as sweep.NAME = [values] "
                          f"(e.g. sweep.{st.selector}.{st.arg_name} = [...])")
  except ConfigError:
    raise
  except Exception as e:   # gin's parser raises SyntaxError, tokenize.TokenError, ValueError
    raise ConfigError(f"--sweep_file={path}: {type(e).__name__}: {e}") from None
  kind = settings.get("SWEEP_KIND", "list" if "SWEEP_RUNS" in settings else "grid")
  if kind not in KINDS:
    raise ConfigError(f"{path}: SWEEP_KIND={kind!r} is not one of {', '.join(KINDS)}")
  spec = {"kind": kind, "axes": axes, "samples": settings.get("SWEEP_SAMPLES"),
          "seed": settings.get("SWEEP_SEED", 0), "runs": settings.get("SWEEP_RUNS")}
  if kind == "list":
    runs = spec["runs"]
    if axes or not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
      raise ConfigError(f"{path}: a list sweep is SWEEP_RUNS = [{{\"NAME\": value, ...}}, ...] "
                        f"and no sweep.NAME lines")
  elif not axes:
    raise ConfigError(f"{path}: nothing to sweep; add lines like "
                      f"sweep.LEARNING_RATE = [1e-3, 3e-3]")
  if kind == "grid" and any(not isinstance(v, list) for v in axes.values()):
    raise ConfigError(f"{path}: a grid needs value lists; ranges like loguniform(a, b) need "
                      f'SWEEP_KIND = "random"')
  if kind == "random" and not (isinstance(spec["samples"], int) and spec["samples"] > 0):
    raise ConfigError(f"{path}: a random sweep needs SWEEP_SAMPLES = <number of runs>")
  return spec


def _axis(value, where: str, name: str):
  if isinstance(value, list) and value:
    return value
  if (isinstance(value, tuple) and len(value) == 3 and value[0] in DISTRIBUTIONS
      and all(isinstance(v, (int, float)) for v in value[1:]) and value[1] < value[2]):
    if value[0] == "loguniform" and value[1] <= 0:
      raise ConfigError(f"{where}: loguniform needs 0 < low < high")
    if value[0] == "randint" and not all(isinstance(v, int) for v in value[1:]):
      raise ConfigError(f"{where}: randint needs integer bounds")
    return value
  raise ConfigError(f"{where}: sweep.{name} must be a non-empty list of values or "
                    f"uniform(low, high) / loguniform(low, high) / randint(low, high)")


def plan(spec: dict) -> list:
  """The runs of a sweep, in order, with unique names."""
  axes = spec["axes"]
  if spec["kind"] == "grid":
    combos = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
  elif spec["kind"] == "random":
    rng = np.random.default_rng(spec["seed"])
    combos = [{name: _draw(rng, axis) for name, axis in axes.items()}
              for _ in range(spec["samples"])]
  else:
    combos = [dict(r) for r in spec["runs"]]
  names, runs = set(), []
  for combo in combos:
    name = run_name(combo)
    base, k = name, 2
    while name in names:
      name, k = f"{base}_{k}", k + 1
    names.add(name)
    runs.append(Run(name, combo))
  return runs


def _draw(rng, axis):
  if isinstance(axis, list):
    return axis[int(rng.integers(len(axis)))]
  dist, low, high = axis
  if dist == "randint":
    return int(rng.integers(low, high + 1))
  x = math.exp(rng.uniform(math.log(low), math.log(high))) if dist == "loguniform" else \
      rng.uniform(low, high)
  return float(f"{x:.3g}")


def run_name(bindings: dict) -> str:
  """``{"LEARNING_RATE": 0.001, "WARMUP_STEPS": 10}`` -> ``lr1e-3_warmup10`` (filesystem-safe)."""
  if not bindings:
    return "base"
  keys = {name: _short_key(name) for name in bindings}
  clashing = {k for k in keys.values() if list(keys.values()).count(k) > 1}
  parts = []
  for name, value in bindings.items():
    key = keys[name] if keys[name] not in clashing else name.lower()
    parts.append(re.sub(r"[^A-Za-z0-9.+-]+", "-", f"{key}{_short_value(value)}").strip("-"))
  name = "_".join(parts)
  if len(name) > 100:
    name = f"{name[:90]}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"
  return name


def _short_key(name: str) -> str:
  last = re.split(r"[./]", name)[-1].lower()
  return ABBREVIATIONS.get(last, last)


def _short_value(value) -> str:
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  if isinstance(value, float):
    if value == int(value) and abs(value) < 1e4:
      return str(int(value))
    if abs(value) < 0.1 or abs(value) >= 1e4:
      mantissa, exponent = f"{value:.2e}".split("e")
      return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:.3g}"
  if isinstance(value, GinText):
    return value.text.strip("@%()")
  return str(value) if isinstance(value, (bool, int, str)) else gin_literal(value)


def gin_literal(value) -> str:
  """A Python value as gin text (strings double-quoted, so shell-quoted flags stay readable)."""
  if isinstance(value, GinText):
    return value.text
  if isinstance(value, str):
    return json.dumps(value)
  if isinstance(value, float) and not math.isfinite(value):
    if math.isnan(value):
      raise ConfigError("gin has no literal for NaN")
    return "1e999" if value > 0 else "-1e999"
  if isinstance(value, list):
    return "[" + ", ".join(gin_literal(v) for v in value) + "]"
  if isinstance(value, tuple):
    return "(" + ", ".join(gin_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  if isinstance(value, dict):
    return "{" + ", ".join(f"{gin_literal(k)}: {gin_literal(v)}" for k, v in value.items()) + "}"
  return repr(value)


def shell_line(argv: list) -> str:
  """A command line as one types it: words quoted only where needed, after a --flag='s "=".

  (The launchers print commands the same way.)
  """
  words = []
  for word in argv:
    flag = re.match(r"--[\w.-]+=", word)
    if re.fullmatch(r"[\w@%+=:,./-]+", word) or not flag:
      words.append(shlex.quote(word))
    else:
      words.append(flag.group(0) + shlex.quote(word[flag.end():]))
  return " ".join(words)


def gin_flags(bindings: dict) -> list:
  return [f"--gin.{name}={gin_literal(value)}" for name, value in bindings.items()]


# ---------------------------------------------------------------------------------------------
# Validation

def validate(runs: list, files: list, search_paths: list, base: list, sweep_dir: str) -> tuple:
  """Parses and builds every run's config; returns (the MODEL_DIR binding name, steps per run)."""
  import gin
  cli.parse(files, search_paths, base)
  try:
    gin.query_parameter("%MODEL_DIR")
    dir_key = "MODEL_DIR"
  except ValueError:
    dir_key = "train.model_dir"
  steps = []
  for i, run in enumerate(runs, 1):
    label = f"sweep run {i}/{len(runs)} {run.name} ({' '.join(gin_flags(run.bindings))})"
    swept = [(f"sweep binding {name} = {gin_literal(value)}", f"{name} = {gin_literal(value)}")
             for name, value in run.bindings.items()]
    model_dir = os.path.join(sweep_dir, run.name)
    try:
      cli.parse(files, search_paths,
                base + swept + [("", f"{dir_key} = {json.dumps(model_dir)}")])
      config = cli.run_config()
    except UserError as e:
      raise ConfigError(f"{label}: {one_line(e)}") from None
    except Exception as e:   # a config's own validation (ValueError, TypeError, ...)
      raise ConfigError(f"{label}: {type(e).__name__}: {e}") from None
    steps.append(config.steps)
  gin.clear_config()
  return dir_key, steps


# ---------------------------------------------------------------------------------------------
# Running

def train_command(python: str, files, search_paths, base_flags, run: Run, dir_key: str,
                  sweep_dir: str) -> list:
  return ([python, "-m", "infini_jax.train"] + [f"--gin_file={f}" for f in files]
          + ([f"--gin_search_paths={','.join(search_paths)}"] if search_paths else [])
          + list(base_flags)
          + gin_flags(run.bindings)
          + [f"--gin.{dir_key}={json.dumps(os.path.join(sweep_dir, run.name))}"])


def record(run_dir: str, cmd: list, env=None, echo: bool = False) -> int:
  """Runs ``cmd``, its output appended to run_dir/train.log, and keeps run_dir/status.json."""
  process = next((os.environ[v] for v in ("INFINI_PROCESS_ID", "SLURM_PROCID", "TPU_WORKER_ID")
                  if os.environ.get(v, "0") != "0"), "0")
  chief = process == "0"
  paths.makedirs(run_dir)
  status = {"status": "running", "command": shell_line(cmd), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "started_unix": time.time()}
  log = paths.Appender(os.path.join(run_dir, "train.log" if chief else f"train.{process}.log"),
                       LOG_UPLOAD_S)
  try:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    status["pid"] = proc.pid
    if chief:
      _write_status(run_dir, status)
    for line in proc.stdout:
      log.write(line)
      log.flush()
      if echo:
        sys.stdout.write(line)
    rc = proc.wait()
  finally:
    log.close()
  last = (sweep_summary.read_metrics(run_dir) or [{}])[-1]
  if rc < 0:   # killed by a signal (Ctrl-C, kill): re-run when the sweep is started again
    status.update(status="interrupted", error=f"killed by signal {-rc}")
  elif rc != 0:
    status.update(status="failed", error=_last_error(run_dir) or last.get("error") or "no output")
  else:
    status["status"] = "preempted" if last.get("event") == "preempted" else "finished"
  status.update(returncode=rc, ended=time.strftime("%Y-%m-%dT%H:%M:%S"), ended_unix=time.time())
  if chief:
    _write_status(run_dir, status)
  return rc


def _write_status(run_dir: str, status: dict) -> None:
  paths.write_text(os.path.join(run_dir, "status.json"), json.dumps(status, indent=1))


def _last_error(run_dir: str) -> str | None:
  """The exception line of the run's log (its last line that looks like one), else its last line."""
  text = paths.read_text(os.path.join(run_dir, "train.log"))
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  for line in reversed(lines[-50:]):
    if re.match(r"^([\w.]+(Error|Exception|Loss|Interrupt)|error)\b.*:", line):
      return line[:500]
  return lines[-1][:500] if lines else None


def device_slots(parallel: int, devices: str | None) -> list:
  """For each of ``parallel`` slots: (env updates, command prefix), on disjoint devices."""
  if devices is None:
    devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    if devices is None and shutil.which("nvidia-smi") and os.environ.get("JAX_PLATFORMS") != "cpu":
      out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
      devices = ",".join(str(i) for i in range(out.count("GPU ")))
  ids = [d for d in (devices or "").split(",") if d.strip()]
  if ids:
    if len(ids) < parallel:
      raise ConfigError(f"--parallel={parallel} needs at least {parallel} devices; have "
                        f"{len(ids)} ({','.join(ids)})")
    per = len(ids) // parallel
    return [({"CUDA_VISIBLE_DEVICES": ",".join(ids[k * per:(k + 1) * per])}, [])
            for k in range(parallel)]
  if parallel == 1 or not shutil.which("taskset"):
    return [({}, [])] * parallel
  cores = sorted(os.sched_getaffinity(0))
  groups = [cores[k::parallel] or [cores[k % len(cores)]] for k in range(parallel)]
  return [({}, ["taskset", "-c", ",".join(map(str, g))]) for g in groups]


def run_local(todo: list, parallel: int, devices, dry_run: bool) -> dict:
  """Runs ``[(run, run_dir, cmd)]`` K at a time; returns name -> exit status."""
  slots = device_slots(parallel, devices)
  if dry_run:
    for i, (run, _, cmd) in enumerate(todo):
      env, prefix = slots[i % parallel]
      print(shell_line([f"{k}={v}" for k, v in env.items()] + prefix + cmd))
    return {}
  free = queue.Queue()
  for slot in slots:
    free.put(slot)

  def one(item):
    run, run_dir, cmd = item
    env, prefix = free.get()
    try:
      where = shell_line([f"{k}={v}" for k, v in env.items()] + prefix)
      print(f"[sweep] start {run.name} {where}".rstrip(), flush=True)
      rc = record(run_dir, prefix + cmd, env={**os.environ, **env})
      print(f"[sweep] {'done' if rc == 0 else f'FAILED (exit {rc})'} {run.name}", flush=True)
      return run.name, rc
    finally:
      free.put((env, prefix))

  with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
    return dict(pool.map(one, todo))


def launcher(name: str) -> str:
  return os.path.join(ROOT, "scripts", name)


def run_slurm(todo: list, sweep_dir: str, python: str, launcher_args: list, dry_run: bool) -> int:
  lines = [shell_line(_recorded(python, run_dir, cmd)) for _, run_dir, cmd in todo]
  os.makedirs(sweep_dir, exist_ok=True)
  array_file = os.path.join(sweep_dir, "slurm_array.txt")
  with open(array_file, "w") as f:
    f.write("".join(line + "\n" for line in lines))
  print(f"# {len(lines)} commands in {array_file}:")
  for line in lines:
    print(line)
  cmd = ["bash", launcher("launch_slurm.sh")] + (["--dry-run"] if dry_run else []) + \
      launcher_args + ["--array-file", array_file]
  print(f"# {shell_line(cmd)}", flush=True)
  return subprocess.run(cmd).returncode


def run_tpu(todo: list, python: str, launcher_args: list, dry_run: bool) -> dict:
  codes = {}
  for run, run_dir, cmd in todo:
    full = ["bash", launcher("launch_tpu_pod.sh")] + (["--dry-run"] if dry_run else []) + \
        launcher_args + ["--"] + _recorded(python, run_dir, cmd)
    print(shell_line(full), flush=True)
    rc = subprocess.run(full).returncode
    codes[run.name] = rc
    if rc and not dry_run:
      print(f"[sweep] FAILED (exit {rc}) {run.name}", flush=True)
  return codes


def _recorded(python: str, run_dir: str, cmd: list) -> list:
  return [python, "-m", "infini_jax.sweep", f"--record={run_dir}", "--"] + cmd


# ---------------------------------------------------------------------------------------------
# The command line

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
  files, search_paths, bindings, rest = cli.split_flags(argv)
  args = _parser().parse_args(rest)
  cli.setup_logging()
  if args.summarize:
    sweep_summary.summarize(args.summarize, args.sort_by)
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
    state = sweep_summary.run_status(run_dir, n)
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
    sweep_summary.summarize(sweep_dir, args.sort_by)
  failed = sorted(name for name, rc in codes.items() if rc)
  if failed:
    print(f"[sweep] {len(failed)} failed: {', '.join(failed)} (see their status.json, train.log)")
  return 1 if failed else 0


if __name__ == "__main__":
  command.run(main)

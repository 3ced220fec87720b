"""Where the runs of a sweep run: local subprocesses, a slurm job array, or a TPU pod."""

import concurrent.futures
import json
import os
import queue
import shutil
import subprocess

from infini_jax.commands import REPO_ROOT
from infini_jax.commands.gin_flags import ConfigError
from infini_jax.commands.sweep.plan import Run, binding_flags, shell_line
from infini_jax.commands.sweep.records import record

def train_command(python: str, files, search_paths, base_flags, run: Run, dir_key: str,
                  sweep_dir: str) -> list:
  return ([python, "-m", "infini_jax.train"] + [f"--gin_file={f}" for f in files]
          + ([f"--gin_search_paths={','.join(search_paths)}"] if search_paths else [])
          + list(base_flags)
          + binding_flags(run.bindings)
          + [f"--gin.{dir_key}={json.dumps(os.path.join(sweep_dir, run.name))}"])


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
  return os.path.join(REPO_ROOT, "scripts", name)


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

"""One run's record: its output appended to train.log and its state in status.json."""

import json
import os
import re
import socket
import subprocess
import sys
import time

from infini_jax import paths
from infini_jax.commands.sweep import summary
from infini_jax.commands.sweep.plan import shell_line

# A train.log in a bucket is uploaded whole: at most this often while the run prints.
LOG_UPLOAD_S = 30.0


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
  last = (summary.read_metrics(run_dir) or [{}])[-1]
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

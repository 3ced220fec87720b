"""Runs a Python script in a subprocess with N fake CPU devices (the device count is fixed when JAX
starts, so multi-device tests cannot run in the test process) and returns what it printed as
``RESULT <json>``."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script: str, devices: int = 8, timeout: int = 600, args=()) -> dict:
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
         "JAX_PLATFORMS": "cpu"}
  done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                        env=env, cwd=ROOT, timeout=timeout)
  assert done.returncode == 0, done.stderr[-3000:]
  line = next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))
  return json.loads(line[len("RESULT "):])

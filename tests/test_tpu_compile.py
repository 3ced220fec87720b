"""scripts/aot_check.py --topology: the train step compiled by the real TPU compiler (libtpu), no TPU.

The compile runs in a subprocess as the script does on any machine (JAX_PLATFORMS=cpu; libtpu only
compiles); the second run gives the same step a device of 10 MiB to check the exit status.
"""

import json
import os
import subprocess
import sys

import pytest

import script_modules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
aot_check = script_modules.load("aot_check")


@pytest.mark.parametrize("name, want", [
    # Cloud's published slice shapes (cloud.google.com/tpu/docs: v4, v5p, v5e, v6e).
    ("v5p-8", ("v5p:2x2x1", 4, 95, "megacore")),
    ("v5p-16", ("v5p:2x2x2", 8, 95, "megacore")),
    ("v5p-128", ("v5p:4x4x4", 64, 95, "megacore")),
    ("v5p-1024", ("v5p:8x8x8", 512, 95, "megacore")),
    ("v4-32", ("v4:2x2x4", 16, 32, "megacore")),
    ("v4-64", ("v4:2x4x4", 32, 32, "megacore")),
    ("v6e-8", ("v6e:2x4", 8, 32, "default")),
    ("v6e-64", ("v6e:8x8", 64, 32, "default")),
    ("v6e-128", ("v6e:8x16", 128, 32, "default")),
    ("v6e-256", ("v6e:16x16", 256, 32, "default")),
    ("v5e-16", ("v5e:4x4", 16, 16, "default")),
    ("v5litepod-32", ("v5e:4x8", 32, 16, "default")),
])
def test_cloud_names_map_to_topologies(name, want):
  assert aot_check.topology(name) == want


@pytest.mark.parametrize("name, message", [
    ("v5p-6", "sizes 8, 16, 32"), ("v6e-512", "sizes 4, 8, 16"), ("v7x-8", "one of v4, v5p"),
    ("v5p", "GENERATION-SIZE")])
def test_unknown_topologies_say_what_exists(name, message):
  with pytest.raises(ValueError, match=message):
    aot_check.topology(name)


def run_check(tmp_path, *flags):
  out = tmp_path / "aot.json"
  # tiny.gin shrunk to one layer and 2 segments of 128: the splash kernel's smallest tile.
  done = subprocess.run(
      [sys.executable, "scripts/aot_check.py", "--topology=v5p-8", "--gin_file=configs/tiny.gin",
       "--gin.ModelConfig.num_layers=1", "--gin.SEQ_LEN=256", f"--json={out}", *flags],
      capture_output=True, text=True, cwd=ROOT, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "TPU_WORKER_HOSTNAMES": "localhost"})
  return done, (json.loads(out.read_text()) if out.exists() else None)


def test_compiles_for_a_v5p_slice_and_checks_the_fit(tmp_path):
  done, result = run_check(tmp_path)
  assert done.returncode == 0, done.stdout + done.stderr[-3000:]
  assert result["device_kind"] == "TPU v5" and result["devices"] == 4
  assert result["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert result["attention_impl"] == "splash"                # "auto" on a TPU
  assert result["pallas_kernels"] > 0                         # the splash kernels are compiled in
  assert result["argument_gib"] > 0 and result["temp_gib"] > 0
  assert 0 < result["peak_gib"] < 1 and result["capacity_gib"] == 95 and result["fits"] is True
  assert "fits: peak" in done.stdout

  done, result = run_check(tmp_path, "--capacity_gib=0.01")   # 10 MiB: the step cannot fit
  assert done.returncode == 1, done.stdout + done.stderr[-3000:]
  assert result["fits"] is False and result["peak_gib"] > 0.9 * 0.01
  assert "DOES NOT FIT" in done.stdout

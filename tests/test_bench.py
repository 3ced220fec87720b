"""Smoke tests of the benchmark scripts at tiny sizes: they run, print their table, write JSON/PNG."""

import json
import os
import subprocess
import sys

import pytest

import script_modules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_length():
  scaling = script_modules.load("bench_scaling")
  assert [scaling.parse_length(s) for s in ("4K", "1M", "3000", "16k")] == [4096, 2**20, 3000, 16384]
  assert scaling.short(2**20) == "1M" and scaling.short(3000) == "3000"


def test_bench_scaling_tiny(tmp_path, capsys):
  scaling = script_modules.load("bench_scaling")
  rows = scaling.main(["--lengths=256,1024", "--segment_len=128", "--models=infini,full",
                       "--max_full_len=256", "--d_model=16", "--mlp_dim=32", "--vocab=64",
                       f"--json={tmp_path / 's.json'}", f"--plot={tmp_path / 's.png'}"])
  out = capsys.readouterr().out
  assert "us/token" in out and "RSS grow" in out and "skipped (> --max_full_len=256)" in out
  by = {(r["mode"], r["model"], r["length"]): r for r in rows}
  assert all(by[("inference", "infini", n)]["status"] == "ok" for n in (256, 1024)), rows
  # Streaming inference: the same chunk program at every length, so the same compiled peak.
  assert (by[("inference", "infini", 256)]["compiled_bytes"]
          == by[("inference", "infini", 1024)]["compiled_bytes"])
  train = by[("train", "infini", 1024)]
  assert train["status"] == "ok" and train["carry_bytes"] == 4 * (16 * 17) * 8   # float32 d x (d+1), 8 segments
  assert by[("train", "full", 256)]["status"] == "ok"
  assert by[("train", "full", 1024)]["status"].startswith("skipped")
  saved = json.loads((tmp_path / "s.json").read_text())
  assert len(saved["rows"]) == 8 and saved["args"]["segment_len"] == 128
  assert (tmp_path / "s.png").stat().st_size > 1000


def test_bench_scaling_marks_what_does_not_fit(capsys):
  scaling = script_modules.load("bench_scaling")
  rows = scaling.main(["--lengths=512", "--segment_len=128", "--models=full", "--modes=train",
                       "--d_model=16", "--mlp_dim=32", "--vocab=64", "--max_bytes=1000"])
  assert rows[0]["status"] == "does not fit" and rows[0]["compiled_bytes"] > 1000
  assert "does not fit" in capsys.readouterr().out


def test_bench_train_preset(tmp_path, capsys):
  train = script_modules.load("bench_train")
  rows = train.main(["--preset=cpu", "--batch=2", "--seq_len=256", "--segment_len=128",
                     "--steps=1", "--warmup=1", "--peak_flops=1e12", "--profile_steps=1",
                     f"--profile={tmp_path / 'trace'}", f"--json={tmp_path / 't.json'}"])
  out = capsys.readouterr().out
  assert "tokens/s" in out and "memory overhead" in out and "GFLOP/s per device" in out
  for r in rows:   # the share of the measured matmul rate, and the step's time by part
    assert r["matmul_flops_per_s_per_device"] > 1e9
    assert r["of_matmul"] == pytest.approx(r["model_flops_per_s_per_device"]
                                           / r["matmul_flops_per_s_per_device"])
    assert r["profile_ms_per_step"]["mlp/matmul"] > 0
    assert (r["profile_ms_per_step"].get("memory_write/other", 0) > 0) == (r["memory"] == "infini")
  infini, none = rows
  assert (infini["memory"], none["memory"]) == ("infini", "none")
  assert infini["flops_per_token_with_memory"] > infini["flops_per_token"]
  assert none["flops_per_token_with_memory"] == none["flops_per_token"]
  for r in rows:
    assert r["tokens_per_s"] > 0 and 0 < r["mfu"] <= r["mfu_with_memory"] < 1
  assert "overhead" in infini
  saved = json.loads((tmp_path / "t.json").read_text())
  assert saved["model"]["segment_len"] == 128 and len(saved["rows"]) == 2


def test_bench_train_runs_the_peer_after_ours(tmp_path, capsys):
  """--peer_python runs scripts/bench_peer.py under another interpreter (here a stand-in that
  writes the peer's JSON row) and prints the ratio of tokens/s."""
  fake = tmp_path / "python"
  fake.write_text("#!/bin/sh\n"
                  "while [ $# -gt 0 ]; do [ \"$1\" = --json ] && out=$2; shift; done\n"
                  "echo '{\"tokens_per_s\": 100.0, \"step_s\": 1.0}' > \"$out\"\n")
  fake.chmod(0o755)
  train = script_modules.load("bench_train")
  with pytest.raises(SystemExit, match="--preset peer"):
    train.main(["--preset=cpu", f"--peer_python={fake}"])
  train.main(["--preset=peer", "--batch=1", "--seq_len=256", "--memories=infini", "--steps=1",
              "--warmup=0", f"--peer_python={fake}", f"--json={tmp_path / 'p.json'}"])
  saved = json.loads((tmp_path / "p.json").read_text())
  assert saved["peer"]["ratio"] == pytest.approx(saved["rows"][0]["tokens_per_s"] / 100.0)
  assert f"{saved['peer']['ratio']:.2f}x tokens/s" in capsys.readouterr().out


def test_bench_train_gin_compile_only(capsys):
  pytest.importorskip("gin")
  train = script_modules.load("bench_train")
  rows = train.main([f"--gin_file={ROOT}/configs/tiny.gin", "--gin.SEQ_LEN=256",
                     "--gin.BATCH_SIZE=2", "--memories=none", "--compile_only"])
  assert rows[0]["seq_len"] == 256 and rows[0]["global_batch"] == 2 and "step_s" not in rows[0]
  assert rows[0]["peak_bytes_per_device"] > 0


def test_bench_train_imports_without_gin_or_data():
  """The GPU image has no gin, seqio or TensorFlow: the script must not need them for presets."""
  code = ("import sys; sys.modules['gin'] = None\n"
          "import importlib.util\n"
          f"spec = importlib.util.spec_from_file_location('b', {os.path.join(ROOT, 'scripts', 'bench_train.py')!r})\n"
          "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
          "bad = [k for k in sys.modules if k.startswith(('infini_jax.data.', 'seqio', 'tensorflow'))\n"
          "       and k not in ('infini_jax.data.config', 'infini_jax.data.state')]\n"
          # a dataclass and the saved input state (plain Python): no TensorFlow
          "assert not bad, bad\n"
          "assert m.PRESETS['1b']['model'].vocab_size == 128256\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 0, out.stderr


def test_bench_matmul_counts_the_peer_step(tmp_path, capsys):
  """The inventory is the peer preset's step: its projections' FLOPs are 6 x (matmul weights) per
  token, each timed product has the FLOPs of its contraction, and the JSON sums them."""
  matmul, train = script_modules.load("bench_matmul"), script_modules.load("bench_train")
  preset = train.PRESETS["peer"]
  cfg = preset["model"]
  assert (matmul.D_MODEL, matmul.MLP, matmul.LAYERS, matmul.VOCAB, matmul.SEGMENT) == (
      cfg.d_model, cfg.mlp_dim, cfg.num_layers, cfg.vocab_size, cfg.segment_len)
  assert matmul.ROWS == preset["batch"] * cfg.segment_len
  assert matmul.SEGMENTS * cfg.segment_len == preset["seq_len"]
  assert matmul.BATCH_HEADS == preset["batch"] * cfg.num_heads and matmul.HEAD_DIM == cfg.head_dim
  d, f = cfg.d_model, cfg.mlp_dim
  weights = cfg.num_layers * (4 * d * d + 3 * d * f) + d * cfg.vocab_size   # q k v o, GLU, logits
  tokens = preset["batch"] * preset["seq_len"]
  products = matmul.products()
  projections = sum(flops * uses for name, _, flops, uses, _, _ in products
                    if name not in ("attention", "memory"))
  assert projections == 6 * weights * tokens

  _, make = matmul.timer_jax()
  for name, kind, flops, _, shapes, contract in products:
    out = make(shapes, contract)()
    contracted = shapes[0][contract[0]]
    assert contracted == shapes[1][contract[1]], (name, kind)
    assert 2 * out.size * contracted == flops, (name, kind, out.shape)

  rows = matmul.main(["--reps=1", f"--json={tmp_path / 'm.json'}"])
  saved = json.loads((tmp_path / "m.json").read_text())
  assert len(rows) == len(products) and all(r["flops_per_s"] > 0 for r in rows)
  assert saved["step_matmul_flops"] == sum(flops * uses for _, _, flops, uses, _, _ in products)
  assert "the step's matmuls:" in capsys.readouterr().out

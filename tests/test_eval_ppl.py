"""eval_ppl on tiny random models: per-segment sums, position buckets, a baseline side by side."""

import json
import math
import os

import numpy as np
import pytest
from flax import nnx

from infini_jax import checkpoint
from infini_jax.commands import eval_ppl, gin_flags
from infini_jax.evals import ppl
from infini_jax.data import DataConfig
from infini_jax.model import InfiniTransformer, ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEG = 64
# tests/configs/smoke.gin's model at SEGMENT_LEN=64, reading the bundled Shakespeare.
GIN = [f"--gin_file={os.path.join(ROOT, 'tests', 'configs', 'smoke.gin')}",
       f"--gin.SEGMENT_LEN={SEG}", "--gin.train.data=@DataConfig()"]
CFG = ModelConfig(vocab_size=384, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                  mlp_dim=64, segment_len=SEG)


def save_run(directory, memory):
  model = InfiniTransformer(ModelConfig(**{**CFG.__dict__, "memory": memory}), rngs=nnx.Rngs(0))
  with checkpoint.Checkpointer(directory / "checkpoints", 1) as ckpt:
    ckpt.save(3, {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param))}, 0, force=True)
    ckpt.wait()
  return directory


def test_buckets_sum_the_right_segments():
  nll = np.arange(1.0, 21.0)            # segment s (1-based) has loss s per token
  weight = np.full(20, 2.0)
  got = ppl.buckets(nll * weight, weight)
  assert got["1"]["loss"] == 1.0 and got["2-4"]["loss"] == 3.0
  assert got["5-16"]["loss"] == 10.5 and got["17+"]["loss"] == 18.5
  assert got["17+"]["tokens"] == 8.0 and math.isclose(got["all"]["ppl"], math.exp(10.5))
  assert ppl.buckets(nll[:4], weight[:4])["5-16"] is None


def test_held_out_data_is_the_corpus_in_long_windows():
  cfg = DataConfig(task="shakespeare_passkey", passkey_rate=0.5, seq_len=1024, segment_len=128)
  held_out = ppl.held_out_data(cfg, 32, 2)
  assert (held_out.task, held_out.passkey_rate, held_out.seq_len) == ("shakespeare", 0.0, 4096)
  assert held_out.batch_size == 2 and not held_out.shuffle


def test_entry_point_compares_with_the_baseline(tmp_path, capsys):
  ours, base = save_run(tmp_path / "ours", "infini"), save_run(tmp_path / "base", "none")
  report = eval_ppl.main(GIN + [f"--checkpoint={ours}", "--segments=18", "--batches=1",
                                "--batch_size=2", f"--baseline_checkpoint={base}",
                                "--baseline_gin.ModelConfig.memory='none'",
                                f"--baseline_gin.SEGMENT_LEN={SEG}", f"--out={tmp_path}"])
  assert report["segments"] == 18 and report["task"] == "shakespeare"
  (infini, none) = report["models"]
  assert (infini["memory"], none["memory"]) == ("infini", "none")
  assert infini["name"] == "infini/linear@3" and none["name"] == "none@3"
  for model in report["models"]:
    assert len(model["nll_per_segment"]) == len(model["tokens_per_segment"]) == 18
    assert model["buckets"]["1"]["tokens"] == 2 * SEG      # two windows of a validation work
    assert model["buckets"]["17+"]["tokens"] == 2 * 2 * SEG
    assert np.isfinite(model["buckets"]["all"]["ppl"])
  assert infini["tokens_per_segment"] == none["tokens_per_segment"]   # the same windows
  assert json.loads((tmp_path / "ppl.json").read_text())["models"][1]["memory"] == "none"
  out = capsys.readouterr().out
  assert "infini/linear@3" in out and "none@3" in out and "17+" in out


def test_a_baseline_of_another_segment_length_is_refused(tmp_path):
  ours = save_run(tmp_path / "ours", "infini")
  with pytest.raises(gin_flags.ConfigError, match="segment_len 16 is not a multiple of the model.s 64"):
    eval_ppl.main(GIN + [f"--checkpoint={ours}", f"--baseline_checkpoint={ours}"])

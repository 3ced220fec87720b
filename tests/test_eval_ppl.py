"""eval_ppl on tiny random models: per-segment sums, position buckets in bits, a baseline side by
side."""

import json
import math
import os
import types

import numpy as np
import pytest
from flax import nnx

from infini_jax import checkpoint
from infini_jax.commands import eval_ppl, gin_flags
from infini_jax.evals import ppl, ppl_report
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
  got = ppl_report.buckets(nll * weight, weight)
  assert got["1"]["loss"] == 1.0 and got["2-4"]["loss"] == 3.0
  assert got["5-16"]["loss"] == 10.5 and got["17+"]["loss"] == 18.5
  assert got["17+"]["tokens"] == 8.0 and math.isclose(got["all"]["ppl"], math.exp(10.5))
  assert ppl_report.buckets(nll[:4], weight[:4])["5-16"] is None


def test_sums_by_segment_and_by_offset_written_out():
  sums = np.arange(12.0)                # a window of 3 segments of 4 positions
  np.testing.assert_array_equal(ppl.by_segment(sums, 4), [0 + 1 + 2 + 3, 4 + 5 + 6 + 7, 38])
  np.testing.assert_array_equal(ppl.by_offset(sums, 4), [4 + 8, 5 + 9, 6 + 10, 7 + 11])


def test_offset_buckets_sum_the_right_offsets():
  nll = np.arange(1.0, 129.0)           # offset k (1-based) has loss k per token
  weight = np.full(128, 3.0)
  got = ppl_report.buckets(nll * weight, weight, ppl_report.OFFSETS)
  assert got["1-4"]["loss"] == 2.5 and got["5-16"]["loss"] == 10.5
  assert got["17-64"]["loss"] == 40.5 and got["65+"]["loss"] == 96.5
  assert got["65+"]["tokens"] == 64 * 3.0 and got["all"]["loss"] == 64.5
  assert ppl_report.buckets(nll[:16], weight[:16], ppl_report.OFFSETS)["17-64"] is None


def result(name, memory, nats_per_token, knocked=None, segment_len=SEG, offset_nats=None,
           first_nats=None):
  tokens = np.full(20, 100.0)
  offset_tokens = np.full(SEG, 19 * 100.0 / SEG)
  first_tokens = np.full(SEG, 100.0 / SEG)
  def sums(nats, offset_nats, first_nats):
    if offset_nats is None:
      offset_nats = np.full(SEG, np.mean(nats[1:]))
    if first_nats is None:
      first_nats = np.full(SEG, nats[0])
    return dict(nll_per_segment=(nats * tokens).tolist(), tokens_per_segment=tokens.tolist(),
                buckets=ppl_report.buckets(nats * tokens, tokens),
                nll_per_offset=(offset_nats * offset_tokens).tolist(),
                tokens_per_offset=offset_tokens.tolist(),
                offset_buckets=ppl_report.buckets(offset_nats * offset_tokens, offset_tokens,
                                                  ppl_report.OFFSETS),
                first_offset_buckets=ppl_report.buckets(first_nats * first_tokens, first_tokens,
                                                        ppl_report.OFFSETS))
  return dict(name=name, memory=memory, segment_len=segment_len,
              **sums(nats_per_token, offset_nats, first_nats),
              knocked_out=None if knocked is None else sums(knocked, None, None))


def test_bits_per_byte_by_hand_and_the_change_against_none():
  ln2 = math.log(2)
  # Segment s: infini 1.5 bits per byte on segment 1, 1.2 later; none 1.6 everywhere.
  # By offset within segments 2+: infini 2.0 bits on offsets 1-4, 1.0 later.
  infini = result("infini", "infini", np.r_[1.5, [1.2] * 19] * ln2, knocked=np.full(20, 1.7 * ln2),
                  offset_nats=np.r_[[2.0] * 4, [1.0] * (SEG - 4)] * ln2,
                  first_nats=np.r_[[3.0] * 4, [1.5] * (SEG - 4)] * ln2)
  none = result("none", "none", np.full(20, 1.6 * ln2))
  full = result("full", "none", np.full(20, 1.0 * ln2), segment_len=20 * SEG)
  b = infini["buckets"]
  assert math.isclose(b["1"]["bits"], 1.5) and math.isclose(b["5-16"]["bits"], 1.2)
  assert math.isclose(b["all"]["bits"], (1.5 + 19 * 1.2) / 20)      # 1.215 bits per byte
  assert math.isclose(infini["knocked_out"]["buckets"]["17+"]["bits"], 1.7)
  np.testing.assert_allclose(ppl_report.bits_per(infini), [1.5] + [1.2] * 19)
  assert ppl_report.none_baseline([infini, full, none], SEG) is none   # not full attention
  change = ppl_report.relative_change(infini["buckets"], none["buckets"])
  assert math.isclose(change["1"], 1.5 / 1.6 - 1) and math.isclose(change["5-16"], -0.25)
  ppl_report.add_vs_none([infini, none], SEG)
  assert none["vs_none"] is None and infini["vs_none"] == change
  text = ppl_report.table([infini, none], SEG, ppl_report.bits_unit("byte"))
  assert text.startswith("bits per byte;") and text.splitlines()[0].endswith("relative to none")
  header, row1, row5 = text.splitlines()[1], text.splitlines()[2], text.splitlines()[4]
  assert header.split()[2:] == ["infini", "infini", "ko", "infini", "vs", "none", "none"]
  assert row1.split() == ["1", "100", "1.5000", "1.7000", "-6.25%", "1.6000"]
  assert row5.split() == ["5-16", "1200", "1.2000", "1.7000", "-25.00%", "1.6000"]
  np.testing.assert_allclose(ppl_report.bits_per(infini, "offset"), [2.0] * 4 + [1.0] * (SEG - 4))
  assert math.isclose(infini["offset_vs_none"]["1-4"], 2.0 / 1.6 - 1)
  assert math.isclose(infini["offset_vs_none"]["17-64"], 1.0 / 1.6 - 1)
  by_offset = ppl_report.table([infini, none], SEG, "bits per byte", ppl_report.BY_OFFSET)
  lines = by_offset.splitlines()
  assert lines[1].split()[:2] == ["offsets", "tokens"]
  assert lines[2].split() == ["1-4", "119", "2.0000", "1.7000", "+25.00%", "1.6000"]
  assert lines[4].split() == ["17-64", "1425", "1.0000", "1.7000", "-37.50%", "1.6000"]
  assert [line.split()[0] for line in lines[2:]] == ["1-4", "5-16", "17-64", "all"]   # no 65+
  # Segment 1 by offset: infini 3.0 bits on offsets 1-4 (+87.5 % against none's 1.6), 1.5 later.
  assert math.isclose(infini["first_offset_vs_none"]["1-4"], 3.0 / 1.6 - 1)
  first = ppl_report.table([infini, none], SEG, "bits per byte", ppl_report.BY_FIRST_OFFSET)
  assert first.splitlines()[2].split() == ["1-4", "6", "3.0000", "1.7000", "+87.50%", "1.6000"]
  assert first.splitlines()[3].split()[2] == "1.5000"
  assert ppl_report.bits_unit("sentencepiece:/m.model") == "bits per token"
  ppl_report.add_vs_none([infini, full], SEG)
  assert infini["vs_none"] is None and full["vs_none"] is None
  assert "vs none" not in ppl_report.table([infini, full], SEG, "bits per token")


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
    everything = model["buckets"]["all"]
    assert math.isclose(everything["bits"], everything["loss"] / math.log(2))
    # By offset: segments 2-18 of the two windows at each offset; together segments 2+.
    assert model["tokens_per_offset"] == [2 * 17.0] * SEG
    assert model["offset_buckets"]["1-4"]["tokens"] == 4 * 2 * 17
    assert math.isclose(sum(model["nll_per_offset"]), sum(model["nll_per_segment"][1:]))
    assert model["offset_buckets"]["65+"] is None      # segments of 64
    # Segment 1 by offset: the two windows at each offset; together segment 1.
    assert model["tokens_per_first_offset"] == [2.0] * SEG
    assert math.isclose(sum(model["nll_per_first_offset"]), model["nll_per_segment"][0])
    assert math.isclose(model["first_offset_buckets"]["all"]["bits"],
                        model["buckets"]["1"]["bits"])
  assert infini["tokens_per_segment"] == none["tokens_per_segment"]   # the same windows
  assert none["vs_none"] is None and math.isclose(
      infini["vs_none"]["1"], infini["buckets"]["1"]["bits"] / none["buckets"]["1"]["bits"] - 1)
  written = json.loads((tmp_path / "ppl.json").read_text())
  assert written["models"][1]["memory"] == "none" and written["unit"] == "bits per byte"
  out = capsys.readouterr().out
  assert "infini/linear@3 vs none" in out and "none@3" in out and "17+" in out
  assert "by offset within the segment" in out and "17-64" in out
  assert "segment 1 by offset" in out
  assert math.isclose(infini["offset_vs_none"]["1-4"], infini["offset_buckets"]["1-4"]["bits"]
                      / none["offset_buckets"]["1-4"]["bits"] - 1)
  assert "held-out bits per byte" in out


def test_a_baseline_of_another_segment_length_is_refused(tmp_path):
  ours = save_run(tmp_path / "ours", "infini")
  with pytest.raises(gin_flags.ConfigError, match="segment_len 16 is not a multiple of the model.s 64"):
    eval_ppl.main(GIN + [f"--checkpoint={ours}", f"--baseline_checkpoint={ours}"])


def test_model_names_tell_the_segment_1_option_and_full_attention_apart():
  def name(**changes):
    return ppl.model_name(types.SimpleNamespace(cfg=ModelConfig(**changes)), 7, SEG)
  assert name(segment_len=SEG) == "infini/linear@7"
  assert name(segment_len=SEG, empty_memory_gate="local_only") == "infini/linear/local_only@7"
  assert name(segment_len=SEG, gate="query") == "infini/linear/query_gate@7"
  assert name(segment_len=SEG, memory="xl", previous_len=2) == "xl/previous2@7"
  assert (name(segment_len=SEG, update_rule="delta", local_context="two_segments", previous_len=2)
          == "infini/delta/two_segments/previous2@7")
  assert (name(segment_len=SEG, memory_gradient="stop")
          == "infini/linear/memory_gradient_stop@7")
  assert name(segment_len=4 * SEG, memory="none") == f"none/seg{4 * SEG}@7"

"""scripts/ppl_table.py: one Markdown table of bits by bucket from hand-written ppl.json files."""

import json
import math

import pytest

from infini_jax.errors import UserError

import script_modules

ppl_table = script_modules.load("ppl_table")


def model(run, memory, bits, knocked=None, tokens=100.0, offset_bits=None, first_bits=None):
  def sums(bits, unit="segment"):
    return {f"nll_per_{unit}": [b * math.log(2) * tokens for b in bits],
            f"tokens_per_{unit}": [tokens] * len(bits)}
  offsets = {} if offset_bits is None else sums(offset_bits, "offset")
  firsts = {} if first_bits is None else sums(first_bits, "first_offset")
  return dict(name=f"{memory}@10", checkpoint=f"runs/{run}/checkpoints", memory=memory,
              segment_len=8, **sums(bits), **offsets, **firsts,
              knocked_out=None if knocked is None else sums(knocked))


def write(path, models, segments=4):
  path.write_text(json.dumps(dict(task="shakespeare", unit="bits per byte", segments=segments,
                                  segment_len=8, models=models)))
  return str(path)


def test_files_of_separate_runs_make_one_table_against_none(tmp_path, capsys):
  none = model("none", "none", [2.0, 1.9, 1.9, 1.9])
  first = write(tmp_path / "a.json", [model("linear", "infini", [2.1, 1.8, 1.7, 1.6],
                                            [2.1, 2.0, 2.0, 2.0]), none])
  second = write(tmp_path / "b.json", [model("xl", "xl", [2.0, 1.9, 1.9, 1.9]), none])
  out = tmp_path / "table.md"
  got = ppl_table.main([first, second, f"--out={out}"])
  assert got["baseline"] == "none"
  labels = [label for label, _, _ in got["rows"]]
  assert labels == ["none", "linear", "linear knock-out", "xl"]   # none once, first
  bits = {label: b for label, b, _ in got["rows"]}
  # Buckets 1 / 2-4 of four segments of 100 tokens each, written out by hand:
  assert bits["linear"]["1"] == pytest.approx(2.1)
  assert bits["linear"]["2-4"] == pytest.approx((1.8 + 1.7 + 1.6) / 3)
  assert bits["linear"]["all"] == pytest.approx((2.1 + 1.8 + 1.7 + 1.6) / 4)
  assert bits["linear"]["5-16"] is None
  text = out.read_text()
  assert text == capsys.readouterr().out
  # 1.7 against 1.9 is -10.53 %; the knock-out's 2.0 is +5.26 %; the baseline has no change.
  assert "| linear | 2.1000 (+5.00 %) | 1.7000 (-10.53 %) | - | - | 1.8000 (-6.49 %) |" in text
  assert "| linear knock-out | 2.1000 (+5.00 %) | 2.0000 (+5.26 %) |" in text
  assert "| none | 2.0000 | 1.9000 | - | - | 1.9250 |" in text
  assert "in brackets the change against none" in text


def test_models_that_read_other_windows_are_refused(tmp_path):
  first = write(tmp_path / "a.json", [model("none", "none", [2.0, 1.9])], segments=2)
  fewer = write(tmp_path / "b.json", [model("xl", "xl", [2.0, 1.9], tokens=90.0)], segments=2)
  with pytest.raises(UserError, match="read other windows than none@10"):
    ppl_table.rows([first, fewer])
  longer = write(tmp_path / "c.json", [model("xl", "xl", [2.0, 1.9, 1.8])], segments=3)
  with pytest.raises(UserError, match="c.json is .*'segments': 3.*same windows"):
    ppl_table.rows([first, longer])


def test_without_a_baseline_the_table_shows_bits_alone(tmp_path):
  only = write(tmp_path / "a.json", [model("linear", "infini", [2.1, 1.8, 1.7, 1.6])])
  shared, rows, baseline = ppl_table.rows([only])
  assert baseline is None and rows[0][2] is None
  assert "no memory=\"none\" baseline" in ppl_table.markdown(shared, rows, baseline)


def test_by_offset_the_columns_are_offsets_within_the_segment(tmp_path):
  # Segments of 8: offsets 1-4 and 5-8 (the 5-16 bucket); 17-64 and 65+ hold nothing.
  none = model("none", "none", [2.0] * 4, offset_bits=[2.0] * 8)
  xl = model("xl", "xl", [2.0] * 4, offset_bits=[1.0] * 4 + [1.5] * 4)
  path = write(tmp_path / "a.json", [xl, none])
  got = ppl_table.main([path, "--by_offset"])
  bits = {label: b for label, b, _ in got["rows"]}
  assert bits["xl"]["1-4"] == pytest.approx(1.0) and bits["xl"]["5-16"] == pytest.approx(1.5)
  assert bits["xl"]["17-64"] is None and bits["xl"]["all"] == pytest.approx(1.25)
  text = ppl_table.markdown(*ppl_table.rows([path], "offset"), "offset")
  assert "| model | offset 1-4 | offset 5-16 | offset 17-64 | offset 65+ | all |" in text
  assert "| xl | 1.0000 (-50.00 %) | 1.5000 (-25.00 %) | - | - | 1.2500 (-37.50 %) |" in text
  assert "segments 2+ by offset" in text
  old = write(tmp_path / "old.json", [model("none", "none", [2.0] * 4)])
  with pytest.raises(UserError, match="no nll_per_offset.*evaluate the model again"):
    ppl_table.rows([old], "offset")


def test_first_segment_the_columns_are_offsets_within_segment_1(tmp_path):
  none = model("none", "none", [2.0] * 4, offset_bits=[1.0] * 8, first_bits=[2.0] * 8)
  xl = model("xl", "xl", [2.0] * 4, offset_bits=[1.0] * 8, first_bits=[3.0] * 4 + [1.0] * 4)
  path = write(tmp_path / "a.json", [xl, none])
  got = ppl_table.main([path, "--first_segment"])
  bits = {label: b for label, b, _ in got["rows"]}
  assert bits["xl"]["1-4"] == pytest.approx(3.0) and bits["xl"]["5-16"] == pytest.approx(1.0)
  assert bits["none"]["all"] == pytest.approx(2.0)
  text = ppl_table.markdown(*ppl_table.rows([path], "first_offset"), "first_offset")
  assert "| model | offset 1-4 | offset 5-16 | offset 17-64 | offset 65+ | all |" in text
  assert "| xl | 3.0000 (+50.00 %) | 1.0000 (-50.00 %) | - | - | 2.0000 (+0.00 %) |" in text
  assert "segment 1 by offset" in text
  with pytest.raises(SystemExit):
    ppl_table.main([path, "--first_segment", "--by_offset"])

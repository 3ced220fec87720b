"""scripts/plot_loss_by_segment.py: a PNG of bits by segment from hand-written ppl.json files."""

import json
import math

import numpy as np
import pytest

from infini_jax.errors import UserError

import script_modules

PNG = b"\x89PNG\r\n\x1a\n"
plot_loss_by_segment = script_modules.load("plot_loss_by_segment")


def model(name, checkpoint, bits, knocked=None):
  tokens = [100.0] * len(bits)
  def sums(bits):
    return dict(nll_per_segment=[b * math.log(2) * t for b, t in zip(bits, tokens)],
                tokens_per_segment=tokens)
  return dict(name=name, checkpoint=checkpoint, **sums(bits),
              knocked_out=None if knocked is None else sums(knocked))


def write(path, models, unit="bits per byte", task="shakespeare"):
  path.write_text(json.dumps(dict(task=task, unit=unit, segments=4, models=models)))
  return str(path)


def test_two_files_make_one_plot_with_the_shared_baseline_once(tmp_path):
  none = dict(model("none@10", "runs/none", [2.0, 1.9, 1.9, 1.9], [2.0, 1.9, 1.9, 1.9]),
              memory="none")    # an older eval_ppl's knock-out of none: itself, drawn once
  first = write(tmp_path / "a.json", [model("infini/linear@10", "runs/linear",
                                            [2.1, 1.8, 1.7, 1.6], [2.1, 2.0, 2.0, 2.0]), none])
  second = write(tmp_path / "b.json", [model("xl@10", "runs/xl", [2.0, 1.8, 1.8, 1.8]), none])
  out = tmp_path / "plot" / "loss.png"
  got = plot_loss_by_segment.main([first, second, f"--out={out}", "--train_segments=2"])
  assert out.read_bytes()[:8] == PNG
  assert got["labels"] == ["infini/linear@10", "none@10", "xl@10"]
  assert got["unit"] == "bits per byte"
  _, lines = plot_loss_by_segment.read_lines([first, second])
  np.testing.assert_allclose(lines[0][1], [2.1, 1.8, 1.7, 1.6])     # nats / ln 2 per token
  np.testing.assert_allclose(lines[0][2], [2.1, 2.0, 2.0, 2.0])     # the knock-out, dashed
  assert lines[1][2] is None


def test_files_of_another_unit_or_not_ppl_json_are_refused(tmp_path):
  first = write(tmp_path / "a.json", [model("none@10", "runs/none", [2.0])])
  other = write(tmp_path / "b.json", [model("none@10", "runs/sp", [2.0])], unit="bits per token")
  with pytest.raises(UserError, match="give files of one task and unit"):
    plot_loss_by_segment.read_lines([first, other])
  (tmp_path / "c.json").write_text("{}")
  with pytest.raises(UserError, match="c.json: not a ppl.json of eval_ppl"):
    plot_loss_by_segment.read_lines([str(tmp_path / "c.json")])


def test_by_offset_plots_the_offsets_within_the_segment(tmp_path):
  xl = model("xl@10", "runs/xl", [2.0, 1.8])
  xl.update(nll_per_offset=[b * math.log(2) * 10 for b in (1.0, 2.0, 3.0)],
            tokens_per_offset=[10.0, 10.0, 0.0])
  path = write(tmp_path / "a.json", [xl])
  got = plot_loss_by_segment.main([path, "--by_offset"])
  assert got["png"] == str(tmp_path / "loss_by_offset.png")
  assert (tmp_path / "loss_by_offset.png").read_bytes()[:8] == PNG
  _, lines = plot_loss_by_segment.read_lines([path], "offset")
  np.testing.assert_allclose(lines[0][1], [1.0, 2.0, np.nan])   # no tokens: NaN, not 0

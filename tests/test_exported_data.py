"""Exported batches (scripts/export_data.py, inputs.ExportedData): the seqio pipeline's batches,
read back with numpy alone, train exactly as the pipeline does on a machine without TensorFlow."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from infini_jax import data, inputs
from infini_jax.errors import UserError
from infini_jax.evals import ppl
from script_modules import ROOT, load
from test_train import losses, run_train

SMOKE = os.path.join(ROOT, "tests", "configs", "smoke.gin")
BLOCKED = ("tensorflow", "tensorflow_datasets", "seqio", "grain", "array_record")


def _local_flags(corpus, data_dir):
  return ["--gin.train.data=@DataConfig()", "--gin.DataConfig.task='local'",
          f"--gin.DataConfig.corpus_pattern='{corpus}'", f"--gin.DataConfig.data_dir='{data_dir}'",
          "--gin.DataConfig.shuffle=True"]


def _exported_flags(directory):
  return ["--gin.train.data=@ExportedData()", f"--gin.ExportedData.directory='{directory}'",
          "--gin.ExportedData.seq_len=%SEQ_LEN", "--gin.ExportedData.segment_len=%SEGMENT_LEN",
          "--gin.ExportedData.batch_size=%BATCH_SIZE"]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
  """A local corpus of 12 documents, its seqio DataConfig (smoke.gin's shapes: batches of 8 x 64,
  segments of 16), and its export: 3 train batches, held-out examples of 64 and 128 tokens."""
  root = tmp_path_factory.mktemp("export")
  corpus = root / "corpus"
  corpus.mkdir()
  rng = np.random.default_rng(0)
  for i in range(12):
    (corpus / f"doc{i}.txt").write_text("".join(rng.choice(list("abcdefgh xyz\n"), 150 + 40 * i)))
  flags = _local_flags(corpus, root / "tfds")
  load("export_data").main([f"--gin_file={SMOKE}", *flags, f"--out={root / 'out'}",
                            "--train_batches=3", "--seq_lens=64,128"])
  cfg = data.DataConfig(task="local", corpus_pattern=str(corpus), data_dir=str(root / "tfds"),
                        shuffle=True, seq_len=64, segment_len=16, batch_size=8)
  return root / "out", cfg, flags


def _batches(pipeline, limit=None):
  out = []
  while limit is None or len(out) < limit:
    try:
      out.append(pipeline.next_local())
    except StopIteration:
      return out
  return out


def test_export_holds_the_seqio_pipelines_batches_in_order(export):
  out, cfg, _ = export
  info = json.loads((out / "info.json").read_text())
  assert info["task"] == "local" and info["vocabulary"] == "byte" and info["train_batches"] == 3
  exported = inputs.ExportedData(str(out), batch_size=8, seq_len=64, segment_len=16)
  assert exported.task == "local" and exported.vocabulary == "byte" and exported.segments == 4
  splits = [("train", cfg, 3), ("validation", cfg, None),
            ("validation", ppl.held_out_data(cfg, 8, None), None)]
  for split, source, limit in splits:
    want = _batches(data.build_pipeline(source, split), limit)
    got = _batches(inputs.make_pipeline(dataclasses.replace(exported, seq_len=source.seq_len),
                                        split, 259), limit)
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
      assert sorted(g) == sorted(w) == sorted(inputs.FIELDS)
      for k in inputs.FIELDS:
        assert g[k].dtype == w[k].dtype
        np.testing.assert_array_equal(g[k], w[k])
  assert want[0]["inputs"].shape == (8, 128)


def test_exported_pipeline_splits_rows_resumes_pads_and_ends(export):
  out, _, _ = export
  exported = inputs.ExportedData(str(out), batch_size=8, seq_len=64, segment_len=16)
  whole = _batches(inputs.ExportedPipeline(exported, 0, 1, split="train"), 3)
  with pytest.raises(UserError, match=r"holds 3 batches of 8; the run reads batch 4.*"
                                      r"--train_batches"):
    _batches(inputs.ExportedPipeline(exported, 0, 1, split="train"), 4)
  assert len(whole) == 3
  # Two processes take the halves of each global batch; a resumed pipeline reads batch k next.
  halves = [inputs.ExportedPipeline(exported, i, 2, start_position=1, split="train")
            for i in range(2)]
  for half, rows in zip(halves, (slice(0, 4), slice(4, 8))):
    np.testing.assert_array_equal(half.next_local()["inputs"], whole[1]["inputs"][rows])
  assert halves[0].state() == {"format": "infini_jax.data_state/1", "global_batches": 2,
                               "global_batch_size": 8}
  # Another batch size: rows regrouped, the last batch filled with rows that weigh nothing.
  with np.load(exported.path("validation")) as f:
    rows = len(f["inputs"])
  assert rows % 8 == 0
  by_3 = _batches(inputs.make_pipeline(dataclasses.replace(exported, batch_size=3),
                                       "validation", 259))
  assert len(by_3) == -(-rows // 3)
  tail = by_3[-1]["loss_mask"][rows % 3 or 3:]
  assert tail.shape[0] == (3 - rows % 3) % 3 and not tail.any()


def test_exported_data_names_the_missing_export_and_the_wrong_length(export, tmp_path):
  out, _, _ = export
  with pytest.raises(UserError, match="holds no info.json.*scripts/export_data.py --out=DIR"):
    inputs.ExportedData(str(tmp_path), batch_size=8, seq_len=64, segment_len=16)
  with pytest.raises(UserError, match=r"validation-256.npz is missing.*--seq_lens=256"):
    inputs.make_pipeline(inputs.ExportedData(str(out), 8, 256, 16), "validation", 259)
  os.symlink(out / "validation-128.npz", tmp_path / "validation-32.npz")
  (tmp_path / "info.json").write_text((out / "info.json").read_text())
  with pytest.raises(UserError, match=r"examples of shape \(128,\), not \(32,\)"):
    inputs.make_pipeline(inputs.ExportedData(str(tmp_path), 8, 32, 16), "validation", 259)


def test_training_on_the_export_without_tensorflow_matches_the_seqio_run(export, tmp_path):
  """The same 3 steps and held-out loss from the seqio pipeline and from the export, the latter in
  a process where TensorFlow, seqio, grain and array_record cannot be imported; then eval_ppl
  reads the export's 128-token windows there too."""
  out, _, flags = export
  blocker = tmp_path / "blocker"
  blocker.mkdir()
  (blocker / "sitecustomize.py").write_text(
      "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in BLOCKED))
  no_tf = {"PYTHONPATH": f"{blocker}:{ROOT}"}
  probe = subprocess.run([sys.executable, "-c", "import seqio"], env={**os.environ, **no_tf},
                         capture_output=True, text=True)
  assert probe.returncode != 0 and "import of seqio halted" in probe.stderr   # blocked
  steps = ["--gin.TRAIN_STEPS=3", "--gin.train.eval_every=3", "--gin.train.eval_batches=1"]
  run_train(tmp_path / "seqio", *flags, *steps)
  run_train(tmp_path / "exported", *_exported_flags(out), *steps, env=no_tf)
  want, got = losses(tmp_path / "seqio"), losses(tmp_path / "exported")
  assert sorted(got) == [1, 2, 3]
  np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)],
                             rtol=1e-6)

  def eval_loss(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["eval_loss"] for line in lines if "eval_loss" in line]
  np.testing.assert_allclose(eval_loss(tmp_path / "exported"), eval_loss(tmp_path / "seqio"),
                             rtol=1e-6)
  proc = run_train(tmp_path / "exported", *_exported_flags(out),
                   "--segments=8", f"--out={tmp_path / 'eval'}", entry="eval_ppl", env=no_tf)
  report = json.loads((tmp_path / "eval" / "ppl.json").read_text())
  assert report["task"] == "local" and report["segments"] == 8, proc.stdout[-2000:]
  assert len(report["models"][0]["nll_per_segment"]) == 8

"""The input pipeline: example layout, document boundaries, packing, shards, determinism, resume."""

import dataclasses
import os
import re
import uuid

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from infini_jax import data
from infini_jax.data import fillers, passkey

tfds.disable_progress_bar()
EOS = 1
LETTERS = "abcdef"
LENGTHS = [3, 15, 16, 17, 40, 70]  # around seq_len 16: shorter, equal, one more, several


def _doc(letter, n):  # unique chunks, one letter per document
  return "".join(f"{letter}{i % 10}" for i in range(n))[:n]


def _text(row):
  return bytes(int(t) - 3 for t in row if t >= 3).decode()


@pytest.fixture(scope="module")
def corpus_cfg(tmp_path_factory):
  """Six documents as validation (finite, in order) and one for train, as a registered corpus."""
  src = tmp_path_factory.mktemp("corpus")
  for letter, n in zip(LETTERS, LENGTHS):
    (src / f"{letter}.txt").write_text(_doc(letter, n))
  (src / "train.txt").write_text(_doc("z", 500))
  name = f"testcorpus{uuid.uuid4().hex[:6]}"
  data.register_corpus(name, str(src), validation_files=[f"{c}.txt" for c in LETTERS])
  return data.DataConfig(task=name, seq_len=16, segment_len=8, batch_size=4, shuffle=False,
                         data_dir=str(tmp_path_factory.mktemp("tfds")))


def _rows(cfg, split="validation", **kw):
  pipe = data.build_pipeline(cfg, split=split, **kw)
  out = {k: [] for k in data.tasks.FEATURES}
  for batch in pipe:
    for k, v in batch.items():
      out[k].append(v)
  return {k: np.concatenate(v) for k, v in out.items()}


def test_examples_are_shifted_masked_and_respect_documents(corpus_cfg):
  rows = _rows(corpus_cfg)
  inputs, targets, mask = rows["inputs"], rows["targets"], rows["loss_mask"]
  assert inputs.dtype == targets.dtype == np.int32 and mask.dtype == np.float32
  np.testing.assert_array_equal(rows["memory_weight"][mask.sum(1) > 0], 1.0)  # text: once each
  assert inputs.shape[1] == 16 and inputs.shape[0] % 4 == 0
  real = mask.sum(1) > 0
  # ceil(len / seq_len) examples per document (its tokens plus EOS, windows overlapping by one).
  assert real.sum() == sum(-(-n // 16) for n in LENGTHS)
  np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
  for inp, tgt, m in zip(inputs[real], targets[real], mask[real]):
    n = int(m.sum())
    assert m[:n].all() and not m[n:].any() and not tgt[n:].any()  # mask 0 exactly on padding
    letters = set(re.sub(r"[^a-z]", "", _text(inp[:n]) + _text(tgt[:n])))
    assert len(letters) == 1  # never two documents in one example
  # Each document, re-assembled from its examples, is exactly the text then EOS.
  for letter, n in zip(LETTERS, LENGTHS):
    mine = [i for i in np.flatnonzero(real) if letter in _text(inputs[i])]
    first = inputs[mine[0]][0]
    tokens = [first] + [t for i in mine for t in targets[i][mask[i] > 0]]
    assert _text(tokens) == _doc(letter, n) and tokens[-1] == EOS


def test_min_doc_tokens_drops_short_documents(corpus_cfg):
  rows = _rows(dataclasses.replace(corpus_cfg, min_doc_tokens=17))
  kept = {c for row in rows["targets"] for c in re.sub(r"[^a-z]", "", _text(row))}
  assert kept == {"d", "e", "f"}


def test_packing_concatenates_documents(corpus_cfg):
  rows = _rows(dataclasses.replace(corpus_cfg, pack=True))
  tokens = np.concatenate([rows["inputs"][:, :1], rows["targets"]], 1)
  real = rows["loss_mask"].sum(1) > 0
  assert (rows["loss_mask"][real] == 1).all()
  assert real.sum() == (sum(LENGTHS) + len(LENGTHS) - 1) // 16  # the tail is dropped
  stream = np.concatenate([tokens[0]] + [t[1:] for t in tokens[real][1:]])
  docs = _text([t if t != EOS else ord("|") + 3 for t in stream]).split("|")
  expected = {_doc(c, n) for c, n in zip(LETTERS, LENGTHS)}
  assert len(set(docs[:-1])) == len(docs) - 1 >= 4 and set(docs[:-1]) <= expected
  assert any(d.startswith(docs[-1]) for d in expected - set(docs[:-1]))  # the cut-off tail
  assert any(EOS in row[1:-1] for row in tokens[real])  # documents meet inside examples


def test_two_shards_cover_the_data_without_overlap(corpus_cfg):
  def keyed(rows):
    return [r.tobytes() for r, m in zip(rows["targets"], rows["loss_mask"]) if m.any()]
  whole = keyed(_rows(corpus_cfg))
  parts = [keyed(_rows(corpus_cfg, shard_index=i, num_shards=2)) for i in range(2)]
  assert len(set(whole)) == len(whole)
  assert not set(parts[0]) & set(parts[1]) and parts[0] and parts[1]
  assert sorted(parts[0] + parts[1]) == sorted(whole)
  with pytest.raises(ValueError, match="batch_size 4 is not divisible by the 3 processes"):
    data.build_pipeline(corpus_cfg, num_shards=3)


def _take(pipe, n):
  return [pipe.next_global(None)["inputs"] for _ in range(n)]


def test_train_is_deterministic_endless_and_resumes_at_the_next_batch(corpus_cfg):
  cfg = dataclasses.replace(corpus_cfg, shuffle=True, seed=3)
  pipe = data.build_pipeline(cfg)
  first = _take(pipe, 40)  # one train document is ~32 examples: this crosses an epoch
  assert pipe.position == 40
  np.testing.assert_array_equal(np.stack(first), np.stack(_take(data.build_pipeline(cfg), 40)))
  other = _take(data.build_pipeline(dataclasses.replace(cfg, seed=4)), 8)
  assert not np.array_equal(np.stack(other), np.stack(first[:8]))
  resumed = data.build_pipeline(cfg, start_position=37)
  assert resumed.position == 37
  np.testing.assert_array_equal(np.stack(_take(resumed, 3)), np.stack(first[37:]))
  pipe.restore(5)
  np.testing.assert_array_equal(pipe.next_global(None)["inputs"], first[5])
  assert pipe.position == 6


def test_next_global_assembles_a_sharded_jax_array(corpus_cfg):
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  batch = data.build_pipeline(corpus_cfg).next_global(sharding)
  assert isinstance(batch["inputs"], jax.Array) and batch["inputs"].shape == (4, 16)
  assert batch["loss_mask"].dtype == np.float32 and batch["targets"].sharding == sharding


def test_passkey_task_trains_on_the_key_and_splits_use_their_own_seeds(tmp_path):
  cfg = data.DataConfig(task="passkey", seq_len=512, segment_len=64, passkey_segments=(4, 6),
                        passkey_digits=4, batch_size=4, shuffle=False, data_dir=str(tmp_path))
  byte = data.get_vocabulary("byte")
  for split in ("train", "validation"):
    batch = data.build_pipeline(cfg, split=split).next_global(None)
    for row in range(4):
      want = passkey.training_example(byte, passkey.example_seed(split, row), 64, (4, 6), 4)
      n = len(want["inputs"])
      assert n in (256, 320, 384)
      for k in want:
        np.testing.assert_array_equal(batch[k][row, :n], want[k])
        assert not batch[k][row, n:].any()
      mask = batch["loss_mask"][row] > 0
      key = re.search(r"The pass key is (\d+)\.", _text(batch["inputs"][row])).group(1)
      assert _text(batch["targets"][row][mask]) == " " + key
  with pytest.raises(ValueError, match="do not fit seq_len 512"):
    data.build_pipeline(dataclasses.replace(cfg, passkey_segments=(4, 9)))
  with pytest.raises(ValueError, match="shorter than the passkey prompt"):
    data.build_pipeline(dataclasses.replace(cfg, passkey_segments=(2, 6)))


def test_passkey_task_with_natural_haystacks_and_varied_wording(tmp_path):
  cfg = data.DataConfig(task="passkey", seq_len=512, segment_len=64, passkey_segments=(4, 6),
                        passkey_digits=1, batch_size=4, shuffle=False, data_dir=str(tmp_path),
                        passkey_natural_filler_rate=0.5, passkey_vary_wording=True)
  batch = data.build_pipeline(cfg).next_global(None)
  for row in range(4):
    want = passkey.training_example(
        data.get_vocabulary("byte"), passkey.example_seed("train", row), 64, (4, 6), 1,
        natural_text=fillers.training_text(), natural_rate=0.5, vary_wording=True)
    np.testing.assert_array_equal(batch["inputs"][row, :len(want["inputs"])], want["inputs"])
  with pytest.raises(ValueError, match="DataConfig.passkey_natural_filler_rate=1.5 must be"):
    dataclasses.replace(cfg, passkey_natural_filler_rate=1.5)
  with pytest.raises(ValueError, match="DataConfig.passkey_vary_wording='yes' must be True or"):
    dataclasses.replace(cfg, passkey_vary_wording="yes")


def test_passkey_mixture(corpus_cfg):
  cfg = dataclasses.replace(corpus_cfg, task=corpus_cfg.task + "_passkey", seq_len=512,
                            segment_len=64, passkey_segments=(4, 8), passkey_rate=0.5,
                            passkey_loss_weight=40.0, passkey_dilution=8.0)
  pipe = data.build_pipeline(cfg)
  batches = [pipe.next_global(None) for _ in range(6)]
  resumed = data.build_pipeline(cfg, start_position=pipe.state()).next_global(None)
  for k, v in data.build_pipeline(cfg, start_position=5).next_global(None).items():
    np.testing.assert_array_equal(v, batches[5][k])    # a mixture resumes exactly too
  assert not np.array_equal(resumed["inputs"], batches[5]["inputs"])
  masks = np.concatenate([b["loss_mask"] for b in batches])
  passkeys = masks.max(1) == 40.0   # answer tokens weigh passkey_loss_weight, text tokens 1
  assert 0 < passkeys.sum() < len(masks)
  np.testing.assert_array_equal((masks[passkeys] == 40.0).sum(1), cfg.passkey_digits + 1)
  assert set(np.unique(masks[passkeys])) == {0.0, 40.0}
  assert set(np.unique(masks[~passkeys])) <= {0.0, 1.0}
  # Text is written into the memory once per token; a passkey prompt's filler r in (1, 8] times,
  # its key sentence once, and the padding after it not at all.
  weights = np.concatenate([b["memory_weight"] for b in batches])
  np.testing.assert_array_equal(weights[~passkeys], 1.0)
  key = "1" * cfg.passkey_digits
  sentence = f" The pass key is {key}. Remember it. {key} is the pass key."
  for row, mask in zip(weights[passkeys], masks[passkeys]):
    end = np.flatnonzero(mask)[-1] + 1
    np.testing.assert_array_equal(row[end:], 0.0)
    r = np.unique(row[:end][row[:end] != 1.0])
    assert len(r) == 1 and 1.0 < r[0] <= 8.0
    assert (row[:end] == 1.0).sum() == len(sentence)
  with pytest.raises(ValueError, match="passkey_dilution 0.5 must be >= 1"):
    dataclasses.replace(cfg, passkey_dilution=0.5)
  with pytest.raises(ValueError, match="passkey_loss_weight 0.0 must be positive"):
    dataclasses.replace(cfg, passkey_loss_weight=0.0)
  with pytest.raises(ValueError, match="set passkey_rate in \\(0, 1\\)"):
    data.build_pipeline(dataclasses.replace(cfg, passkey_rate=0.0))
  with pytest.raises(ValueError, match="applies to '<corpus>_passkey' mixtures"):
    data.build_pipeline(dataclasses.replace(corpus_cfg, passkey_rate=0.1))
  with pytest.raises(ValueError, match="not task 'passkey'; set DataConfig.passkey_rate=0$"):
    data.build_pipeline(dataclasses.replace(cfg, task="passkey"))


def test_bundled_corpus_default_task(tmp_path):
  cfg = data.DataConfig(seq_len=256, segment_len=64, batch_size=2, data_dir=str(tmp_path))
  assert cfg.task == "shakespeare" and data.task_name(cfg).startswith("shakespeare.")
  assert data.task_name(data.DataConfig()) == "shakespeare"  # registered on import
  batch = data.build_pipeline(cfg).next_global(None)
  assert batch["inputs"].shape == (2, 256) and batch["loss_mask"].sum() > 0


def test_state_restores_any_number_of_processes_and_batch_sizes(corpus_cfg, caplog):
  cfg = dataclasses.replace(corpus_cfg, shuffle=True, seed=5)
  one = data.build_pipeline(cfg)
  rows = np.concatenate(_take(one, 6))            # 24 examples of the global sequence
  state = data.build_pipeline(cfg, start_position=3).state()
  assert state["global_batches"] == 3 and state["global_batch_size"] == 4
  halves = [data.build_pipeline(cfg, shard_index=i, num_shards=2, start_position=state)
            for i in range(2)]
  np.testing.assert_array_equal(np.concatenate([h.next_global(None)["inputs"] for h in halves]),
                                rows[12:16])
  assert halves[0].state() == data.build_pipeline(cfg, start_position=4).state()
  # 3 batches of 4 are 6 batches of 2 (the same examples), but not a whole number of 8.
  two = data.build_pipeline(dataclasses.replace(cfg, batch_size=2), start_position=state)
  assert two.position == 6
  np.testing.assert_array_equal(two.next_global(None)["inputs"], rows[12:14])
  with pytest.raises(ValueError, match="resume with a batch_size that divides 12"):
    data.build_pipeline(dataclasses.replace(cfg, batch_size=8), start_position=state)
  # A checkpoint from before the input state held a bare batch count: it resumes, and says how.
  with caplog.at_level("WARNING", logger="infini_jax"):
    legacy = data.build_pipeline(cfg, start_position=3)
  assert "saved only a batch count" in caplog.text
  np.testing.assert_array_equal(legacy.next_global(None)["inputs"], rows[12:16])


def test_prepared_records_hold_the_task_examples_and_resume_far_out(corpus_cfg):
  from infini_jax.data import prepare, records, tasks
  cfg = dataclasses.replace(corpus_cfg, shuffle=False)
  folder = prepare.split_dir(cfg, tasks.task_name(cfg), "validation")
  data.build_pipeline(cfg, split="validation")          # prepares on first use
  info = records.read_info(folder)
  assert info["examples"] == sum(-(-n // 16) for n in LENGTHS)
  assert [name for name, _ in info["features"]] == list(data.tasks.FEATURES)
  raw = records.open_split(folder, 16)
  assert len(raw) == info["examples"]
  # A record is the example's four features, raw little-endian: check one against its bytes.
  first = raw[0]
  import grain
  stored = grain.sources.ArrayRecordDataSource([os.path.join(folder, info["shards"][0])])[0]
  assert len(stored) == 4 * 16 * 4
  np.testing.assert_array_equal(np.frombuffer(stored[:64], "<i4"), first["inputs"])
  np.testing.assert_array_equal(np.frombuffer(stored[128:192], "<f4"), first["loss_mask"])
  assert first["inputs"].dtype == np.int32 and first["loss_mask"].dtype == np.float32
  assert len(set(re.sub(r"[^a-z]", "", _text(first["inputs"])))) == 1
  with pytest.raises(ValueError, match="examples of 16 tokens, the run asks for 32"):
    records.open_split(folder, 32)
  # Far into training, a batch is read directly: the 10^9-th global batch, on two processes.
  far = [data.build_pipeline(corpus_cfg, shard_index=i, num_shards=2, start_position=10**9)
         for i in range(2)]
  assert far[0].next_global(None)["inputs"].shape == (2, 16) and far[0].position == 10**9 + 1


def test_prepare_data_script_writes_every_split_of_the_run(tmp_path, capsys):
  import json
  from script_modules import ROOT, load
  from infini_jax.data import records
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  for i in range(6):
    (corpus / f"doc{i}.txt").write_text(_doc("abcdef"[i], 20 * (i + 1)))
  load("prepare_data").main([
      f"--gin_file={os.path.join(ROOT, 'tests', 'configs', 'smoke.gin')}",
      "--gin.train.data=@DataConfig()", "--gin.DataConfig.task='local'",
      f"--gin.DataConfig.corpus_pattern='{corpus}'", f"--gin.DataConfig.data_dir='{tmp_path}'",
      "--shards=2"])
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()
           if line.startswith("{")]
  assert [line["split"] for line in lines] == ["train", "validation"]
  train = records.read_info(lines[0]["folder"])
  assert len(train["shards"]) == 2 and all(train["counts"]) and train["seq_len"] == 64
  # Each document of 20 * (i + 1) bytes + EOS gives ceil(bytes / 64) examples, in one split.
  assert train["examples"] + lines[1]["examples"] == sum(-(-(20 * (i + 1)) // 64)
                                                          for i in range(6))
  assert len(records.read_info(lines[1]["folder"])["shards"]) == 1
  with pytest.raises(ValueError, match="not a DataConfig: nothing to prepare"):
    load("prepare_data").main([f"--gin_file={os.path.join(ROOT, 'tests', 'configs', 'smoke.gin')}"])

"""The local-text TFDS builder and the bundled corpus: documents, splits, clear errors."""

import gzip
import json

import pytest
import tensorflow_datasets as tfds

from infini_jax import data
from infini_jax.data import corpus, local_text

tfds.disable_progress_bar()


def _docs(builder, split):
  return {e["id"].decode(): e["text"].decode()
          for e in tfds.as_numpy(builder.as_dataset(split=split))}


def test_txt_jsonl_and_gz_files_become_documents(tmp_path):
  src = tmp_path / "src"
  (src / "sub").mkdir(parents=True)
  (src / "a.txt").write_text("first document\nwith two lines")
  with gzip.open(src / "sub" / "b.txt.gz", "wt") as f:
    f.write("gzipped document")
  (src / "c.jsonl").write_text(
      json.dumps({"text": "json one"}) + "\n\n" + json.dumps({"text": "json two", "x": 1}) + "\n")
  (src / "notes.md").write_text("not a corpus file")
  (src / "empty.txt").write_text("  \n")

  builder = local_text.prepared_builder(local_text.make_config(str(src), validation_fraction=0.3),
                                        str(tmp_path / "tfds"))
  train, val = _docs(builder, "train"), _docs(builder, "validation")
  assert len(val) == 1 and not set(train) & set(val)
  assert {**train, **val} == {
      "a.txt": "first document\nwith two lines", "sub/b.txt.gz": "gzipped document",
      "c.jsonl:1": "json one", "c.jsonl:3": "json two"}


def test_validation_files_and_rebuild_on_change(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  for name in "abc":
    (src / f"{name}.txt").write_text(f"document {name}")
  config = local_text.make_config(str(src / "*.txt"), validation_files=["b.txt"])
  builder = local_text.prepared_builder(config, str(tmp_path / "tfds"))
  assert set(_docs(builder, "validation")) == {"b.txt"}
  assert set(_docs(builder, "train")) == {"a.txt", "c.txt"}
  (src / "d.txt").write_text("a new document")
  assert local_text.make_config(str(src / "*.txt"), validation_files=["b.txt"]).name != config.name
  with pytest.raises(ValueError, match=r"\['zz.txt'\] are not in the corpus"):
    local_text.prepared_builder(
        local_text.make_config(str(src), validation_files=["zz.txt"]), str(tmp_path / "tfds"))


def test_empty_folder_is_a_clear_error(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no .txt, .jsonl or .txt.gz files found.*corpus_pattern"):
    data.build_pipeline(data.DataConfig(task="local", corpus_pattern=str(tmp_path / "empty"),
                                        data_dir=str(tmp_path / "tfds")))
  with pytest.raises(ValueError, match="corpus_pattern is not set"):
    data.build_pipeline(data.DataConfig(task="local", data_dir=str(tmp_path / "tfds")))


def test_file_that_is_not_utf8_is_a_clear_error(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  (src / "good.txt").write_text("fine text")
  (src / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
  cfg = data.DataConfig(task="local", corpus_pattern=str(src), data_dir=str(tmp_path / "tfds"),
                        seq_len=64, segment_len=32)
  with pytest.raises(ValueError, match=r"latin1.txt is not UTF-8.*convert it to UTF-8"):
    data.build_pipeline(cfg)


def test_bad_jsonl_is_a_clear_error(tmp_path):
  (tmp_path / "a.jsonl").write_text('{"text": "ok"}\n{"body": "no text key"}\n')
  with pytest.raises(ValueError, match=r"a.jsonl:2 has no string field 'text'"):
    list(data.text_files.iter_documents([str(tmp_path / "a.jsonl")]))
  (tmp_path / "b.jsonl").write_text('{"text": "ok"}\nnot json\n')
  with pytest.raises(ValueError, match=r"b.jsonl:2 is not valid JSON"):
    list(data.text_files.iter_documents([str(tmp_path / "b.jsonl")]))


def test_seq_len_not_a_multiple_of_segment_len_is_a_clear_error():
  with pytest.raises(ValueError, match="seq_len 1000 is not a multiple of segment_len 256; set "
                                       "seq_len to a multiple of 256 \\(e.g. 1024\\)"):
    data.DataConfig(seq_len=1000, segment_len=256)


def test_bundled_validation_works_never_appear_in_train(tmp_path):
  config = local_text.make_config(corpus.shakespeare_pattern(), "shakespeare",
                                  corpus.SHAKESPEARE_VALIDATION)
  builder = local_text.prepared_builder(config, str(tmp_path / "tfds"))
  ids = {split: [e["id"].decode() for e in tfds.as_numpy(
      builder.as_dataset(split=split, decoders={"text": tfds.decode.SkipDecoding()}))]
         for split in ("train", "validation")}
  assert sorted(ids["validation"]) == sorted(corpus.SHAKESPEARE_VALIDATION)
  assert len(ids["train"]) >= 35 and not any(i.endswith("_gut_f.txt") for i in ids["train"])
  assert not set(ids["train"]) & set(ids["validation"])

"""The second bundled corpus: the Python standard library's source files of 16 KB or more."""

import os
import sysconfig

import numpy as np
import tensorflow_datasets as tfds

from infini_jax.data import DataConfig, corpus, local_text, text_files
from infini_jax.inputs import make_pipeline

tfds.disable_progress_bar()
SPEC = corpus.CORPORA["pystdlib"]


def files():
  return text_files.list_files(corpus.pattern_of("pystdlib", None), "corpus_pattern",
                               SPEC.suffixes, SPEC.min_bytes, SPEC.exclude_dirs)


def test_documents_are_stdlib_sources_of_16_kb_or_more():
  found = files()
  root = sysconfig.get_paths()["stdlib"]
  assert len(found) >= 50
  for path in found:
    assert path.startswith(root) and path.endswith(".py")
    assert os.path.getsize(path) >= 16 * 1024
    parts = os.path.relpath(path, root).split(os.sep)
    assert not {"site-packages", "dist-packages", "test", "tests"} & set(parts), path
  assert os.path.join(root, "typing.py") in found            # 100+ KB: in
  assert os.path.join(root, "this.py") not in found          # 1 KB: out


def test_split_is_deterministic_disjoint_and_by_name():
  ids = [doc_id for doc_id, _ in text_files.iter_documents(files())]
  val = text_files.validation_ids(ids, SPEC.validation_files, SPEC.validation_fraction)
  # The same names in another order (another machine's listing) give the same split.
  again = text_files.validation_ids(ids[::-1], SPEC.validation_files, SPEC.validation_fraction)
  assert val == again and 0 < len(val) < len(ids)
  assert abs(len(val) - 0.1 * len(ids)) <= 1
  # A document's side depends on its own name only: drop half the others, it stays.
  kept = ids[::2]
  assert text_files.validation_ids(kept, (), 0.1) <= set(kept)
  train = set(ids) - val
  assert train and not train & val


def test_task_reads_through_data_config(tmp_path):
  cfg = DataConfig(task="pystdlib", seq_len=512, segment_len=128, batch_size=2, shuffle=False,
                   data_dir=str(tmp_path))
  builder = local_text.prepared_builder(local_text.make_config(
      corpus.pattern_of("pystdlib", None), "pystdlib", (), SPEC.validation_fraction, "text",
      SPEC.suffixes, SPEC.min_bytes, SPEC.exclude_dirs), str(tmp_path))
  val_ids = {e["id"].decode() for e in tfds.as_numpy(builder.as_dataset(split="validation"))}
  assert val_ids and all(i.endswith(".py") for i in val_ids)
  batch = make_pipeline(cfg, "validation", 259).next_local()
  assert batch["inputs"].shape == (2, 512)
  text = bytes(int(t) - 3 for t in np.asarray(batch["inputs"][0]) if t >= 3).decode("utf-8", "replace")
  assert "def " in text or "import " in text or "class " in text

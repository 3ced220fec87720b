"""A tensorflow-datasets builder over local text files: one example per document.

The builder config carries the file pattern; its name is a fingerprint of the files, so a changed
corpus is built afresh under `data_dir/local_text/<name>/` instead of reading a stale copy.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

from infini_jax.data import quiet_tf  # noqa: F401, I001  (first: a quiet TensorFlow import)
import tensorflow_datasets as tfds

from infini_jax.data import text_files


@dataclasses.dataclass(eq=False)
class LocalTextConfig(tfds.core.BuilderConfig):
  pattern: str = ""
  validation_files: tuple[str, ...] = ()
  validation_fraction: float = 0.05
  text_key: str = "text"
  suffixes: tuple[str, ...] = text_files.SUFFIXES
  min_bytes: int = 0
  exclude_dirs: tuple[str, ...] = ()


class LocalText(tfds.core.GeneratorBasedBuilder):
  """Documents from `.txt`, `.txt.gz` and `.jsonl` files, split into train and validation."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = []  # made per corpus by `make_config`

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"Local text documents from {self.builder_config.pattern}",
        features=tfds.features.FeaturesDict(
            {"id": tfds.features.Text(), "text": tfds.features.Text()}),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    files = text_files.list_files(cfg.pattern, "corpus_pattern", cfg.suffixes, cfg.min_bytes,
                                  cfg.exclude_dirs)
    ids = [doc_id for doc_id, _ in text_files.iter_documents(files, cfg.text_key)]
    val = text_files.validation_ids(ids, cfg.validation_files, cfg.validation_fraction)
    return {
        "train": self._generate_examples(files, val, False),
        "validation": self._generate_examples(files, val, True),
    }

  def _generate_examples(self, files, val, validation: bool):
    for doc_id, text in text_files.iter_documents(files, self.builder_config.text_key):
      if (doc_id in val) == validation:
        yield doc_id, {"id": doc_id, "text": text}


def make_config(pattern: str, name: str = "corpus", validation_files: Sequence[str] = (),
                validation_fraction: float = 0.05, text_key: str = "text",
                suffixes: Sequence[str] = text_files.SUFFIXES, min_bytes: int = 0,
                exclude_dirs: Sequence[str] = ()) -> LocalTextConfig:
  """A config for the files at `pattern` (raises ValueError if there are none); ``suffixes``,
  ``min_bytes``, ``exclude_dirs``: which files are read (``text_files.list_files``)."""
  filters = (tuple(suffixes), min_bytes, tuple(exclude_dirs))
  files = text_files.list_files(pattern, "corpus_pattern", *filters)
  settings = (tuple(validation_files), validation_fraction, text_key)
  if filters != (text_files.SUFFIXES, 0, ()):   # the default keeps existing corpora's names
    settings += filters
  return LocalTextConfig(
      name=f"{name}_{text_files.fingerprint(files, *settings)}",
      pattern=os.path.abspath(os.path.expanduser(pattern)),
      validation_files=tuple(validation_files),
      validation_fraction=validation_fraction,
      text_key=text_key,
      suffixes=tuple(suffixes), min_bytes=min_bytes, exclude_dirs=tuple(exclude_dirs))


def prepared_builder(config: LocalTextConfig, data_dir: str | None = None) -> LocalText:
  """The builder, its dataset built first if it is not on disk yet."""
  builder = LocalText(config=config, data_dir=data_dir)
  builder.download_and_prepare()
  return builder

"""Imported by tests/configs/trace_examples.gin: every training process appends the ids of the
examples it reads to $TRACE_DIR/<pid>.jsonl. An example's id is read from its own text ("id0042
..."), not from the pipeline's indices, so the test checks what the model was fed."""

import json
import os
import re

from infini_jax.data import pipeline

_next_local = pipeline.Pipeline.next_local


def example_id(tokens) -> int:
  """The id in a byte-vocabulary example's text (byte b is token b + 3); -1 for padding rows."""
  text = bytes(int(t) - 3 for t in tokens if t >= 3).decode()
  found = re.search(r"id(\d{4})", text)
  return int(found.group(1)) if found else -1


def _traced(self):
  batch = _next_local(self)
  if self.split == "train":
    record = {"batch": self.position - 1, "shard": self.shard_index, "shards": self.num_shards,
              "ids": [example_id(row) for row in batch["inputs"]]}
    with open(os.path.join(os.environ["TRACE_DIR"], f"{os.getpid()}.jsonl"), "a") as f:
      f.write(json.dumps(record) + "\n")
  return batch


if "TRACE_DIR" in os.environ:   # a training process of the test, not the test itself
  pipeline.Pipeline.next_local = _traced

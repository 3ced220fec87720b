"""TensorBoard event files of a run: the gates' tag names, and scalars read back without TensorFlow.

The trainer writes them (``progress.Progress``); the sweep summary reads the loss curves and
``scripts/plot_gates.py`` the gates over training.
"""

import os
import struct

from infini_jax import paths


def gate_tag(layer: int, head: int) -> str:
  """The scalar tag of the gate sigmoid(beta) of one layer and head."""
  return f"gates/layer_{layer}/head_{head}"


def read_scalars(tb_dir: str, tags) -> dict:
  """{tag: {step: value}} of ``tags`` in the event files in tb_dir, oldest first (a resumed run's
  later file wins); {} without the directory. The files are TFRecords of Event protos, read here
  directly: TensorBoard's own loader imports TensorFlow when it is installed, seconds per read.
  """
  try:
    from tensorboard.compat.proto import event_pb2
    names = paths.listdir(tb_dir)
  except (ImportError, OSError):
    return {}
  files = sorted((n for n in names if n.startswith("events.out.tfevents.")),
                 key=lambda n: (n.split(".")[3], n))
  curves = {}
  for name in files:
    with paths.open(os.path.join(tb_dir, name), "rb") as f:
      while True:   # record: uint64 length, uint32 crc, data, uint32 crc
        header = f.read(12)
        if len(header) < 12:
          break
        data = f.read(struct.unpack("<Q", header[:8])[0])
        if len(f.read(4)) < 4:
          break   # a record still being written
        event = event_pb2.Event.FromString(data)
        for value in event.summary.value:
          if value.tag in tags and value.HasField("simple_value"):
            curves.setdefault(value.tag, {})[event.step] = value.simple_value
  return curves

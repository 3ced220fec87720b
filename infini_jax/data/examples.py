"""The global sequence of examples of a task or mixture: example i by index, in constant time.

"train" is endless. A corpus task is read from its prepared records (prepare.py) and repeated,
each epoch in a new order when ``cfg.shuffle`` (grain's index shuffle: epoch e is a permutation of
all N examples, so within an epoch none repeats and none is left out). The passkey task makes
example i from its seed. A mixture interleaves its tasks by their rates (grain's mix, a fixed
pattern by index). Any other split is finite and in order; a mixture's is mixed by rate until its
first task runs out.

Nothing here knows processes: pipeline.py gives each process its rows of each global batch.
"""

from __future__ import annotations

from infini_jax.data import quiet_tf  # noqa: F401, I001  (first: a quiet TensorFlow import)
import grain
import numpy as np
import seqio

from infini_jax.data import prepare, records, tasks
from infini_jax.data.config import DataConfig

ENDLESS = 2**62   # passkey examples of the train split: more than any run reads


class _Passkey:
  """index -> passkey example ``index`` of ``split``, zero-padded to ``seq_len``."""

  def __init__(self, source: tasks.PasskeySource, split: str, seq_len: int):
    self.source, self.split, self.seq_len = source, split, seq_len

  def __call__(self, index: int) -> dict:
    return {k: np.pad(v, (0, self.seq_len - len(v)))
            for k, v in self.source.example(self.split, index).items()}


def _task(cfg: DataConfig, task: seqio.Task, split: str, seed: int) -> grain.MapDataset:
  train = split == "train"
  if isinstance(task.source, tasks.PasskeySource):   # made from seeds: nothing to prepare
    count = ENDLESS if train else task.source.num_input_examples(split)
    return grain.MapDataset.range(count).map(_Passkey(task.source, split, cfg.seq_len))
  prepare.prepare(cfg, task.name, split)   # once; afterwards only reads info.json
  ds = records.open_split(prepare.split_dir(cfg, task.name, split), cfg.seq_len)
  if not train:
    return ds
  return (ds.shuffle(seed=seed) if cfg.shuffle else ds).repeat()


def components(name: str) -> list[tuple[seqio.Task, float]]:
  """[(task, rate)] of a seqio mixture, or [(task, 1.0)] of a task."""
  mixture_or_task = seqio.get_mixture_or_task(name)
  if isinstance(mixture_or_task, seqio.Mixture):
    return [(t, float(mixture_or_task.get_rate(t))) for t in mixture_or_task.tasks]
  return [(mixture_or_task, 1.0)]


def global_examples(cfg: DataConfig, split: str) -> grain.MapDataset:
  """Every process's view of the examples of ``split`` for ``cfg``: a dict of [seq_len] arrays
  ("inputs", "targets", "loss_mask", "memory_weight") per index."""
  parts = components(tasks.task_name(cfg))
  datasets = [_task(cfg, task, split, int(np.random.SeedSequence([cfg.seed, i]).generate_state(1)[0]))
              for i, (task, _) in enumerate(parts)]
  if len(datasets) == 1:
    return datasets[0]
  return grain.MapDataset.mix(datasets, [rate for _, rate in parts])

"""Data: vocabularies, corpora as seqio tasks, the passkey task, and per-host input pipelines.

seqio tasks define the data; prepare.py writes their examples once to ArrayRecord (records.py);
examples.py reads them by index as one global sequence, and pipeline.py gives each process its
rows of every global batch, resumable from one number (state.py).

Names are imported lazily: `from infini_jax.data import passkey` and `data.DataConfig` need no
TensorFlow; `build_pipeline`, `get_vocabulary` and `register_corpus` pull in seqio.
"""

import importlib

_EXPORTS = {
    "DataConfig": "config",
    "build_pipeline": "pipeline",
    "Pipeline": "pipeline",
    "get_vocabulary": "vocab",
    "register_corpus": "corpus",
    "task_name": "tasks",
}
_MODULES = ("config", "corpus", "examples", "local_text", "passkey", "pipeline", "prepare",
            "records", "state", "tasks", "text_files", "vocab")

__all__ = sorted(_EXPORTS) + ["passkey"]


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
  if name in _MODULES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

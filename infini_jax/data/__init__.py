"""Data: vocabularies, corpora as seqio tasks, the passkey task, and per-host input pipelines.

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
_MODULES = ("config", "corpus", "local_text", "passkey", "pipeline", "tasks", "text_files",
            "vocab")

__all__ = sorted(_EXPORTS) + ["passkey"]


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
  if name in _MODULES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

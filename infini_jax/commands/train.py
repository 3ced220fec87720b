"""``python -m infini_jax.train --gin_file=configs/tiny.gin [--gin.NAME=VALUE ...]``.

    python -m infini_jax.train --gin_file=configs/1b.gin --gin.MODEL_DIR="'runs/1b'" \
        --gin.TRAIN_STEPS=1000 --gin.train.checkpoint_every=100

Flags:
  --gin_file=F           a gin file (repeatable; later files and bindings win); an included
                         'a/b.gin' is looked up in configs/ and the search paths
  --gin_search_paths=D,E more folders for --gin_file and includes
  --gin.NAME=VALUE       one binding, e.g. --gin.TRAIN_STEPS=500, --gin.ModelConfig.memory='"xl"',
                         --gin.train.keep_checkpoints=5 (configurables: ModelConfig,
                         OptimizerConfig, DataConfig, SyntheticData, ExportedData, MeshConfig,
                         train; see infini_jax/run.py for train's)
  --verbose              a user error's traceback too

Writes the run's gin config into ``train.model_dir`` first (so a failed run still has it), trains
(``training.trainer.train``), then replaces it with gin's operative config: what was actually used.
A run whose ``model_dir`` has checkpoints resumes from its newest good step.
"""

import logging
import os

import gin
import jax

from infini_jax import paths
from infini_jax.commands import gin_flags
from infini_jax.training import trainer


def main(argv=None) -> dict:
  gin_flags.parse_command_line(argv)
  config = gin_flags.run_config()
  if not config.model_dir:
    raise gin_flags.ConfigError("train.model_dir is not set; pass --gin.MODEL_DIR=/path/to/run")
  _write_config(config.model_dir, gin.config_str())
  try:
    result = trainer.train(config)
  finally:
    _write_config(config.model_dir, gin.operative_config_str())
  logging.getLogger("infini_jax").info("done: %s", result)
  return result


def _write_config(model_dir: str, text: str) -> None:
  if jax.process_index() == 0:
    paths.write_text(os.path.join(model_dir, "config.gin"), text)

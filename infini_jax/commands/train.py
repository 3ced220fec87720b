"""``python -m infini_jax.train --gin_file=configs/tiny.gin [--gin.NAME=VALUE ...]``.

Writes the run's gin config into ``train.model_dir`` first (so a failed run still has it), trains
(``training.trainer.train``), then replaces it with gin's operative config: what was actually used.
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

"""What the commands that read a run share: their own flags beside gin's, and the run to read.

The evaluations (``eval_passkey``, ``eval_ppl``, ``generate``, ``scripts/plot_gates.py``) take the
trainer's gin flags plus a few of their own (``--checkpoint=DIR``, ``--lengths=...``):
:func:`split_own_flags` takes those off before the rest goes to :mod:`gin_flags`. Without
``--gin_file``, the run's own ``config.gin`` (written by the trainer next to ``checkpoints/``) is
read, so evaluating a run needs only its directory.
"""

import os
import re

from infini_jax import paths
from infini_jax.commands import gin_flags
from infini_jax.evals import restore
from infini_jax.run import RunConfig


def split_own_flags(argv, names, switches=()) -> tuple[dict, list]:
  """Takes ``--NAME=VALUE`` for ``NAME`` in ``names``, and ``--NAME`` for ``NAME`` in
  ``switches``, off ``argv``: ({name: [values]}, rest); a switch's value is "true".

  A flag may repeat (its values are kept in order); a flag without a value, or a switch with
  one, is an error.
  """
  own, rest = {}, []
  for arg in argv:
    name, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
    if name in switches:
      if sep:
        raise gin_flags.ConfigError(f"{arg}: --{name} takes no value; write --{name} or leave it out")
      own.setdefault(name, []).append("true")
    elif name in names:
      if not sep:
        raise gin_flags.ConfigError(f"{arg}: expected --{name}=VALUE")
      own.setdefault(name, []).append(value)
    else:
      rest.append(arg)
  return own, rest


def last(own: dict, name: str, default=None):
  """The last value given for ``name`` (a later flag overrides an earlier one), or ``default``."""
  return own[name][-1] if name in own else default


_SUFFIXES = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}


def parse_count(text: str, flag: str) -> int:
  """``"2048"``, ``"32K"`` (32768) or ``"1M"`` (1048576) -> int >= 1; binary multiples, like the
  paper's "1M tokens"."""
  match = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)\s*", text)
  if not match or int(match.group(1)) < 1:
    raise gin_flags.ConfigError(f"{flag}: {text!r} is not a count like 2048, 32K or 1M (at least 1)")
  return int(match.group(1)) * _SUFFIXES[match.group(2).upper()]


def parse_list(text: str, flag: str, parse=None) -> list:
  items = [t.strip() for t in text.split(",") if t.strip()]
  if not items:
    raise gin_flags.ConfigError(f"{flag}: expected a comma-separated list")
  return [parse(t, flag) for t in items] if parse else items


def parse_gin(argv, checkpoint_flag: str | None = None) -> RunConfig:
  """Parses the gin flags in ``argv`` (nothing else may be left) -> the run's checked config.

  Without ``--gin_file``, the ``config.gin`` of the run that ``checkpoint_flag`` points at is read.
  """
  files, search_paths, bindings, rest = gin_flags.split_flags(argv)
  if rest:
    raise gin_flags.ConfigError(f"unknown arguments {rest}")
  if not files:
    found = run_config(checkpoint_flag) if checkpoint_flag else None
    if found is None:
      raise gin_flags.ConfigError("no --gin_file given and no run config.gin found; pass the run's gin "
                            "files (e.g. --gin_file=configs/passkey_tiny.gin) or "
                            "--checkpoint=RUN_DIR of a run that wrote RUN_DIR/config.gin")
    files = [found]
  gin_flags.parse(files, search_paths, bindings)
  return gin_flags.run_config()


def run_config(path: str) -> str | None:
  """``config.gin`` of the run owning ``path`` (a run dir, its checkpoints dir or one step's)."""
  path = paths.path(path)
  for _ in range(3):
    candidate = path / "config.gin"
    if paths.isfile(candidate):
      return os.fspath(candidate)
    path = path.parent
  return None


def checkpoint_dir(path: str | None, model_dir: str | None) -> str:
  """The checkpoints to read: ``path`` (a run dir or a checkpoints/step dir) or MODEL_DIR's."""
  if path is None:
    if not model_dir:
      raise gin_flags.ConfigError("no --checkpoint given and train.model_dir (MODEL_DIR) is not set")
    path = os.path.join(model_dir, "checkpoints")
  if paths.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  return path


def default_out(checkpoint_directory: str) -> str:
  """``RUN_DIR/eval`` of the run that owns a checkpoints directory (or one of its steps)."""
  path = paths.path(checkpoint_directory)
  if path.name.isdigit():
    path = path.parent
  return os.fspath(path.parent / "eval")


def load(argv_gin, checkpoint_flag: str | None = None) -> restore.Loaded:
  """Parses the gin flags and restores the newest good checkpoint (or ``checkpoint_flag``'s)
  sharded over the run's mesh (``train.mesh``)."""
  config = parse_gin(argv_gin, checkpoint_flag)
  return restore.load_run(config, checkpoint_dir(checkpoint_flag, config.model_dir))

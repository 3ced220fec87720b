"""The gin command line shared by every entry point (T5X conventions).

``--gin_file=F`` (repeatable), ``--gin_search_paths=A,B``, ``--gin.BINDING=VALUE`` (repeatable;
``--gin.TRAIN_STEPS=100`` overrides a macro, ``--gin.train.steps=100`` a parameter). Library code
has no gin decorators: the configurables are registered here, at the boundary.

Errors stop the run before anything starts, naming the flag: a missing file, gin's own message for
an unknown configurable or parameter, and, which gin does not catch, an override of a macro that no
gin file defines (a misspelt ``--gin.TRAIN_STEP=`` would otherwise be silently ignored).

These are :class:`ConfigError`, a ``UserError``: ``entry.run`` prints them as one ``error:``
line.
"""

import difflib
import inspect
import logging
import os
import re
import sys

import gin

from infini_jax import paths
from infini_jax.errors import UserError

_CONFIGURABLES = {}   # short name -> the gin-wrapped callable
_PARAMETERS = {}      # short name -> its parameter names, for "did you mean"


class ConfigError(UserError):
  """A bad command-line flag or gin binding."""


def register() -> None:
  """Registers the configurables under short names: ModelConfig, DataConfig, train, ..."""
  if _CONFIGURABLES:
    return
  # gin also looks for an included 'a/b.gin' as a resource of a Python package 'a'; a folder
  # named like an include's folder in the working directory (runs/, models/) then crashes it.
  # Includes here resolve through the search paths only.
  from gin import resource_reader
  gin.config._FILE_READERS[:] = [r for r in gin.config._FILE_READERS
                                 if r[0] is not resource_reader.system_path_reader]
  # A run's config.gin in a bucket (what evaluation reads back when given only the run).
  gin.config.register_file_reader(paths.open, lambda p: paths.is_bucket(p) and paths.isfile(p))
  from infini_jax import inputs, sharding
  from infini_jax.training import optim
  from infini_jax.data.config import DataConfig
  from infini_jax.model import ModelConfig
  from infini_jax.run import RunConfig
  for fn, name in ((ModelConfig, "ModelConfig"), (optim.OptimizerConfig, "OptimizerConfig"),
                   (DataConfig, "DataConfig"), (inputs.SyntheticData, "SyntheticData"),
                   (inputs.ExportedData, "ExportedData"),
                   (sharding.MeshConfig, "MeshConfig"), (RunConfig, "train"),
                   (hf_path, "hf_path")):
    _CONFIGURABLES[name] = gin.external_configurable(fn, name)
    _PARAMETERS[name] = list(inspect.signature(fn).parameters)
  gin.constant("DEFAULT_RULES", sharding.DEFAULT_RULES)


def hf_path(directory: str) -> str:
  """``"hf:" + directory``: a Hugging Face folder for ``train.init_from`` and the vocabulary."""
  return f"hf:{directory}"


def split_flags(argv):
  """``argv`` -> (gin files, search paths, [(flag, binding)], other args)."""
  files, paths, bindings, rest = [], [], [], []
  for arg in argv:
    if arg.startswith("--gin_file="):
      files.append(arg.split("=", 1)[1])
    elif arg.startswith("--gin_search_paths="):
      paths.extend(p for p in arg.split("=", 1)[1].split(",") if p)
    elif arg.startswith("--gin."):
      name, sep, value = arg[len("--gin."):].partition("=")
      if not sep:
        raise ConfigError(f"{arg}: expected --gin.NAME=VALUE")
      bindings.append((arg, f"{name} = {value}"))
    else:
      rest.append(arg)
  return files, paths, bindings, rest


def _find(path: str, search_paths) -> str:
  for root in ["", *search_paths]:
    candidate = os.path.join(root, path) if root else path
    if paths.isfile(candidate):
      return candidate
  raise ConfigError(f"--gin_file={path}: no such file (looked in the current directory"
                    + (f" and {', '.join(search_paths)}" if search_paths else "")
                    + "); check the path or add its folder with --gin_search_paths")


def _defined_macros() -> set:
  names = set()
  for (scope, selector), _ in gin.config._CONFIG.items():   # gin keeps macros as "NAME/gin.macro"
    if selector == "gin.macro" and scope:
      names.add(scope)
  return names


def parse(files, search_paths, bindings) -> None:
  """Parses the gin files then the bindings, one at a time so an error names its flag."""
  register()
  gin.clear_config()
  search_paths = list(search_paths) + [_configs_dir()]
  for p in search_paths:
    gin.add_config_file_search_path(p)
  for f in files:
    try:
      gin.parse_config_file(_find(f, search_paths))
    except ConfigError:
      raise
    except Exception as e:   # gin raises ValueError, NameError, IOError, ...
      raise _gin_error(f"--gin_file={f}", e) from None
  for flag, binding in bindings:
    name = binding.split("=", 1)[0].strip()
    if re.fullmatch(r"[A-Z][A-Z0-9_]*", name) and name not in _defined_macros():
      raise ConfigError(f"{flag}: no gin file defines the macro {name}"
                        + _did_you_mean(name, _defined_macros()))
    try:
      gin.parse_config(binding)
    except Exception as e:
      raise _gin_error(flag, e) from None
  _check_macros_defined()


def _check_macros_defined() -> None:
  """A ``%NAME`` that no file or flag defines would fail deep inside gin, without a line."""
  defined = _defined_macros()

  def references(value):
    if isinstance(value, gin.config.ConfigurableReference):
      yield value
    elif isinstance(value, (list, tuple)):
      for v in value:
        yield from references(v)
    elif isinstance(value, dict):
      for v in value.values():
        yield from references(v)

  for (_, selector), params in gin.config._CONFIG.items():
    for param, value in params.items():
      for ref in references(value):
        name = "/".join(ref.scopes)
        if ref.selector == "gin.macro" and name not in defined:
          raise ConfigError(f"{selector.rsplit('.', 1)[-1]}.{param} = %{name}: no gin file or "
                            f"flag defines the macro {name}{_did_you_mean(name, defined)}")


def _gin_error(flag: str, error: Exception) -> ConfigError:
  """gin's message for ``flag``, with the closest names when it names an unknown one."""
  message, sep, context = str(error).partition("\n")
  if found := re.search(r"Configurable '(\w+)' doesn't have a parameter named '(\w+)'", message):
    message = message.rstrip(".") + _did_you_mean(found.group(2), _PARAMETERS.get(found.group(1)))
  elif found := re.search(r"No configurable matching '([\w.]+)'", message):
    message = message.rstrip(".") + _did_you_mean(found.group(1), _CONFIGURABLES)
  return ConfigError(f"{flag}: {message}{sep}{context}")


def _did_you_mean(name: str, choices) -> str:
  close = difflib.get_close_matches(name, sorted(choices or ()), n=3)
  return f"; did you mean {' or '.join(close)}?" if close else ""


def _configs_dir() -> str:
  """The repository's configs/ folder, so ``--gin_file=tiny.gin`` also finds shipped configs."""
  from infini_jax.commands import REPO_ROOT
  return os.path.join(REPO_ROOT, "configs")


def run_config():
  """The parsed gin config as a checked ``RunConfig`` (gin's ``train``); a config that does not
  build (a missing or mistyped binding) is a ConfigError naming it."""
  try:
    return _CONFIGURABLES["train"]()
  except UserError:
    raise
  except Exception as e:   # gin: a required binding missing, an unknown one, a config's own check
    raise ConfigError(f"{type(e).__name__}: {str(e).splitlines()[0]}") from None


def bindings_of(name: str) -> dict:
  """The values gin binds to the parameters of configurable ``name`` (references resolved)."""
  return gin.get_bindings(name)


# Warnings that orbax and tensorflow-datasets log on every normal run (a read-only restore, our
# own corpus builder's config), about nothing a user could change.
_ROUTINE_WARNINGS = re.compile(r"read_only=True, setting save_interval_steps|Given directory is "
                               r"read only|Using custom data configuration")


def setup_logging() -> None:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                      stream=sys.stdout)
  absl = logging.getLogger("absl")
  absl.setLevel(logging.WARNING)
  if not absl.filters:
    absl.addFilter(lambda record: not _ROUTINE_WARNINGS.search(record.getMessage()))


def parse_command_line(argv) -> None:
  """Parses a command line of gin flags only (``--gin_file``, ``--gin_search_paths``,
  ``--gin.NAME=VALUE``), sets up logging and JAX's processes: what train and eval start with."""
  files, search_paths, bindings, rest = split_flags(sys.argv[1:] if argv is None else argv)
  if rest:
    raise ConfigError(f"unknown arguments {rest}; use --gin_file=, --gin_search_paths=, "
                      f"--gin.NAME=VALUE and --verbose")
  if not files:
    raise ConfigError("no --gin_file given; e.g. --gin_file=configs/tiny.gin")
  setup_logging()
  parse(files, search_paths, bindings)
  from infini_jax import distributed
  distributed.initialize()   # before anything touches a JAX backend

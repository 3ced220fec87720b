"""What the long-context evaluations share: their flags, a model restored from a run, streaming.

The entry points (``eval_passkey``, ``eval_ppl``, ``scripts/plot_gates.py``) take the trainer's gin
flags plus a few of their own (``--checkpoint=DIR``, ``--lengths=...``): :func:`split_own_flags`
takes those off before the rest goes to :mod:`infini_jax.cli`. Without ``--gin_file``, the run's
own ``config.gin`` (written by the trainer next to ``checkpoints/``) is read, so evaluating a run
needs only its directory.

:func:`stream_prefill` reads an input of any length in fixed chunks of whole segments through
``decode.prefill``, so one compiled program serves every length and memory use does not grow with
it; :func:`score_continuation` then teacher-forces the expected continuation through
``decode.decode_step``.

The parameters are restored sharded over the run's mesh by its logical-axis rules, as the trainer
holds them (``train.mesh``, default all devices on ``fsdp``), so a model too large for one device
is evaluated on several; run its computations inside ``with loaded.sharded():`` so that the
model's activations are constrained by the same rules.
"""

import dataclasses
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infini_jax import checkpoint, cli, decode, paths, sharding, step
from infini_jax.errors import UserError
from infini_jax.run import RunConfig



@dataclasses.dataclass
class Loaded:
  """A model restored from a checkpoint, with the configuration it was read with."""
  model: object          # InfiniTransformer, its parameters sharded over ``mesh``
  config: RunConfig      # the run's configuration (model, data, model_dir, mesh, ...)
  checkpoint: str        # the checkpoint directory the parameters came from
  step: int              # the checkpoint step
  mesh: jax.sharding.Mesh
  rules: tuple           # the logical-axis rules the parameters were sharded by

  def sharded(self):
    """The context in which jitted computations on the model run sharded like its parameters."""
    return sharding.activate(self.mesh, self.rules)


# ----------------------------------------------------------------------------- flags


def split_own_flags(argv, names) -> tuple[dict, list]:
  """Takes ``--NAME=VALUE`` for ``NAME`` in ``names`` off ``argv``: ({name: [values]}, rest).

  A flag may repeat (its values are kept in order); ``--NAME`` without a value is an error.
  """
  own, rest = {}, []
  for arg in argv:
    name, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
    if name in names:
      if not sep:
        raise cli.ConfigError(f"{arg}: expected --{name}=VALUE")
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
    raise cli.ConfigError(f"{flag}: {text!r} is not a count like 2048, 32K or 1M (at least 1)")
  return int(match.group(1)) * _SUFFIXES[match.group(2).upper()]


def parse_list(text: str, flag: str, parse=None) -> list:
  items = [t.strip() for t in text.split(",") if t.strip()]
  if not items:
    raise cli.ConfigError(f"{flag}: expected a comma-separated list")
  return [parse(t, flag) for t in items] if parse else items


def parse_gin(argv, checkpoint_flag: str | None = None) -> RunConfig:
  """Parses the gin flags in ``argv`` (nothing else may be left) -> the run's checked config.

  Without ``--gin_file``, the ``config.gin`` of the run that ``checkpoint_flag`` points at is read.
  """
  files, search_paths, bindings, rest = cli.split_flags(argv)
  if rest:
    raise cli.ConfigError(f"unknown arguments {rest}")
  if not files:
    found = run_config(checkpoint_flag) if checkpoint_flag else None
    if found is None:
      raise cli.ConfigError("no --gin_file given and no run config.gin found; pass the run's gin "
                            "files (e.g. --gin_file=configs/passkey_tiny.gin) or "
                            "--checkpoint=RUN_DIR of a run that wrote RUN_DIR/config.gin")
    files = [found]
  cli.parse(files, search_paths, bindings)
  return cli.run_config()


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
      raise cli.ConfigError("no --checkpoint given and train.model_dir (MODEL_DIR) is not set")
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


# ----------------------------------------------------------------------------- models


def restore_params(directory: str, target, step_number: int | None = None):
  """``checkpoint.restore_params`` for an evaluation: every parameter of ``target`` must be in
  the checkpoint (a config that differs from the run's is an error, not a half-random model),
  and a folder without a usable step is the user's to fix. -> (params, restore report)."""
  if not paths.isdir(directory):
    raise UserError(f"checkpoint directory {directory} does not exist; point --checkpoint=DIR "
                    f"(or MODEL_DIR) at a run directory or its checkpoints/")
  try:
    params, report = checkpoint.restore_params(directory, target, step_number)
  except FileNotFoundError as e:   # no step at all, or none that restores
    raise UserError(f"{e}; point --checkpoint=DIR (or MODEL_DIR) at a run directory, or its "
                    f"checkpoints/, holding a saved step that restores") from e
  if report["missing"]:
    raise UserError(f"checkpoint {report['directory']} lacks parameters {report['missing']}; "
                    f"is the gin config the one this run was trained with (e.g. "
                    f"ModelConfig.memory)?")
  return params, report


def restore_model(model_cfg, directory: str, mesh: jax.sharding.Mesh, rules,
                  step_number: int | None = None):
  """The model of ``model_cfg`` with the parameters of a checkpoint -> (model, restore report).

  Each parameter is read straight into its shards over ``mesh`` (by its logical axes and
  ``rules``), so no device ever holds more than its part.
  """
  graphdef, abstract = step.abstract_model(model_cfg)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        nnx.to_pure_dict(abstract), sharding.param_shardings(abstract, mesh, rules))
  params, report = restore_params(directory, target, step_number)
  nnx.replace_by_pure_dict(abstract, params)
  return nnx.merge(graphdef, abstract), report


def load(argv_gin, checkpoint_flag: str | None = None) -> Loaded:
  """Parses the gin flags and restores the newest good checkpoint (or ``checkpoint_flag``'s)
  sharded over the run's mesh (``train.mesh``)."""
  config = parse_gin(argv_gin, checkpoint_flag)
  directory = checkpoint_dir(checkpoint_flag, config.model_dir)
  mesh = config.mesh.build()
  model, report = restore_model(config.model, directory, mesh, config.mesh.rules)
  return Loaded(model, config, report["directory"], int(report["step"]), mesh, config.mesh.rules)


def encoder(data_cfg):
  """``str -> token ids`` of the run's vocabulary (byte for synthetic-data runs)."""
  from infini_jax.data.vocab import get_vocabulary   # seqio: only when text is encoded
  return get_vocabulary(getattr(data_cfg, "vocabulary", "byte"))


# ----------------------------------------------------------------------------- streaming


def stream_prefill(model, tokens, chunk_segments: int = 16):
  """``decode.prefill`` over ``tokens [batch, length]`` in chunks of ``chunk_segments`` segments.

  Every chunk has the same shape (the last one is padded and given its true length), so one
  compiled program serves any length, and no array grows with it but the host's token ids.
  Returns (decode state, float32 logits ``[batch, vocab]`` at the last token).
  """
  tokens = np.asarray(tokens, np.int32)
  batch, length = tokens.shape
  n = model.cfg.segment_len
  chunk = min(chunk_segments * n, -(-length // n) * n)
  state = logits = None
  for start in range(0, length, chunk):
    piece = tokens[:, start:start + chunk]
    real = piece.shape[1]
    if real < chunk:
      piece = np.pad(piece, ((0, 0), (0, chunk - real)))
    state, logits = decode.prefill(model, piece, np.full((batch,), real, np.int32), state)
  return state, logits


@jax.jit
def _score(logits, token):
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
  return jnp.argmax(logits, axis=-1).astype(jnp.int32), nll


def score_continuation(model, state, logits, continuation):
  """Teacher-forces ``continuation [batch, m]`` after a prefill.

  Returns numpy (predicted ``[batch, m]``: the argmax at each position given the true tokens
  before it, nll ``[batch, m]``). The greedy continuation equals ``continuation`` exactly when
  every prediction is right, so ``(predicted == continuation).all(-1)`` is greedy correctness.
  """
  continuation = np.asarray(continuation, np.int32)
  predicted, nll = [], []
  for t in range(continuation.shape[1]):
    token = jnp.asarray(continuation[:, t])
    p, n = _score(logits, token)
    predicted.append(p)
    nll.append(n)
    if t + 1 < continuation.shape[1]:
      logits, state = decode.decode_step(model, state, token)
  return np.stack(jax.device_get(predicted), 1), np.stack(jax.device_get(nll), 1)

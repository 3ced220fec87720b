"""A run's configuration as one typed value, and the one place its step functions are built.

Gin binds :class:`RunConfig` under the name ``train`` (``train.steps = 100``, ``train.model =
@ModelConfig()``, ...), so the trainer, the evaluations, ``scripts/aot_check.py`` and
``scripts/bench_train.py`` all read the same fields with the same defaults, and every one of them
checks a config the same way before any work starts: each field's type (gin does no type checks),
ranges, and that data and model agree. :func:`build_run` turns a config into the mesh and the
jitted step functions.
"""

import dataclasses
import inspect
import types
import typing
from typing import Any

import jax

from infini_jax.training import divergence, optim, step
from infini_jax import sharding
from infini_jax.data.config import DataConfig
from infini_jax.errors import UserError, check_regex
from infini_jax.inputs import ExportedData, SyntheticData
from infini_jax.model import ModelConfig


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Everything a run is: model, data, optimizer, mesh, and the loop's settings (gin: ``train``).

  Attributes:
    data: the training input (a seqio ``DataConfig``, its batches exported as ``ExportedData``,
      or ``SyntheticData``); its ``batch_size`` is the global batch and ``seq_len`` the tokens
      per example.
    eval_data: the held-out data (its "validation" split is read); None: ``data``.
    init_from: continual pretraining: a checkpoint directory of another run (only its params are
      read; missing ones are initialised and listed), or "hf:DIR" for Hugging Face weights.
    init_fresh: with ``init_from``, regexes of parameter paths (``"blocks/attn/beta"``) that keep
      their fresh initialisation instead of the loaded values: ``("beta",)`` restarts every gate
      at ``ModelConfig.gate_init``, reopening memories that the other run closed.
    loss_chunk: segment positions whose logits are computed at a time (0: the whole segment);
      with a big vocabulary, e.g. 512 keeps the float32 logits out of the largest temporaries.
    peak_flops_per_device: the chip's peak for MFU; None reads it from the device kind.
    on_divergence: when a step's loss, gradient norm or new parameters are not finite, or its
      loss spikes (``spike_factor`` times the mean of the last ``spike_window`` losses; None: no
      spike check): "stop" raises ``divergence.Diverged``; "rewind" restores the newest
      checkpoint and goes on with the data after the bad step (at most ``max_rewinds`` times).
      Either way no checkpoint ever holds a diverged state.
    memory_knockout: in [0, 1]: the fraction of each training step's sequences whose memory is
      never written (it stays empty; drawn anew each step from ``seed`` and the step), so the
      layers also learn on whole sequences without a memory, not on segment 1 alone (a
      diagnostic beyond the paper; evaluation is unchanged). 0: off. Needs a memory.
    window_drop: in [0, 1]: the fraction of each training step's segments that do not see the
      previous segment (drawn anew each step from ``seed`` and the step), so that a model that
      carries it (``ModelConfig.carried_len`` > 0) also learns segment starts without it, as at
      a document's start (beyond the paper; evaluation is unchanged). 0: off.
  """
  model: ModelConfig
  optimizer: optim.OptimizerConfig
  data: DataConfig | ExportedData | SyntheticData
  model_dir: str
  steps: int
  mesh: sharding.MeshConfig = sharding.MeshConfig()
  seed: int = 0
  z_loss: float = 0.0
  grad_accum_steps: int = 1
  loss_chunk: int = 0
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  keep_every: int | None = None
  log_every: int = 10
  eval_every: int = 0
  eval_data: DataConfig | ExportedData | SyntheticData | None = None
  eval_batches: int = 8
  init_from: str | None = None
  init_fresh: tuple[str, ...] = ()
  peak_flops_per_device: float | None = None
  on_divergence: str = "stop"
  spike_factor: float | None = None
  spike_window: int = 100
  max_rewinds: int = 3
  memory_knockout: float = 0.0
  window_drop: float = 0.0

  def __post_init__(self):
    check_kinds(self)
    if self.on_divergence not in divergence.ACTIONS:
      raise UserError(f"train.on_divergence={self.on_divergence!r}; expected one of "
                      f"{', '.join(map(repr, divergence.ACTIONS))}")
    divergence.Guard(self.spike_factor, self.spike_window)   # checks its settings
    if isinstance(self.init_fresh, list):
      object.__setattr__(self, "init_fresh", tuple(self.init_fresh))
    if self.init_fresh and not self.init_from:
      raise UserError(f"train.init_fresh={self.init_fresh!r} needs train.init_from (the run whose "
                      "other parameters are loaded); set it or remove train.init_fresh")
    for pattern in self.init_fresh:
      check_regex(pattern, "train.init_fresh", "train.init_fresh")
    for name, fraction_of in (
        ("memory_knockout", "training sequences whose memory is never written"),
        ("window_drop", "training segments that do not see the previous segment")):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise UserError(f"train.{name}={getattr(self, name)} must be in [0, 1] (the fraction "
                        f"of {fraction_of})")
    if self.memory_knockout and self.model.memory == "none":
      raise UserError(f"train.memory_knockout={self.memory_knockout} needs a memory, but "
                      "ModelConfig.memory='none'; set ModelConfig.memory or remove it")
    if self.window_drop and not self.model.carried_len:
      raise UserError(f"train.window_drop={self.window_drop} needs a model that carries the "
                      "previous segment, but ModelConfig.carried_len is 0; set "
                      'ModelConfig.memory="xl" or local_context="two_segments", or remove it')
    for data in (self.data, self.eval_data):
      if data is not None and data.segment_len != self.model.segment_len:
        raise UserError(f"data segment_len {data.segment_len} differs from the model's "
                        f"{self.model.segment_len}; bind both to the macro SEGMENT_LEN")
    for name, least in (("steps", 0), ("log_every", 1), ("checkpoint_every", 1),
                        ("keep_checkpoints", 1), ("eval_every", 0), ("eval_batches", 1),
                        ("grad_accum_steps", 1), ("max_rewinds", 0)):
      if getattr(self, name) < least:
        raise UserError(f"train.{name}={getattr(self, name)} must be >= {least}; set "
                        f"--gin.train.{name}")

  @property
  def held_out(self) -> DataConfig | ExportedData | SyntheticData:
    """The data whose "validation" split evaluation reads."""
    return self.eval_data or self.data


@dataclasses.dataclass(frozen=True)
class Run:
  """A config with its mesh and jitted step functions (see ``step.StepFns``)."""
  config: RunConfig
  mesh: jax.sharding.Mesh
  fns: step.StepFns
  schedule: Any

  @property
  def rules(self) -> tuple:
    return self.config.mesh.rules

  def sharded(self):
    """The context in which the step functions trace and run: the mesh and its rules."""
    return sharding.activate(self.mesh, self.rules)


def build_run(config: RunConfig, devices=None) -> Run:
  """The mesh of ``config.mesh`` over ``devices`` (default all) and the run's step functions.

  ``devices`` may be abstract TPU devices (``scripts/aot_check.py``): nothing here executes.
  """
  _, abstract_params = step.abstract_model(config.model)
  tx = optim.make_optimizer(config.optimizer, abstract_params)   # checks its patterns
  schedule = optim.make_schedule(config.optimizer)
  mesh = config.mesh.build(devices)
  with sharding.activate(mesh, config.mesh.rules):
    fns = step.build(config.model, tx, mesh, config.mesh.rules, config.data.batch_size,
                     config.data.seq_len, z_loss=config.z_loss,
                     grad_accum_steps=config.grad_accum_steps, loss_chunk=config.loss_chunk,
                     schedule=schedule, memory_knockout=config.memory_knockout,
                     window_drop=config.window_drop, seed=config.seed)
  return Run(config, mesh, fns, schedule)


# --------------------------------------------------------------------------------------- kinds


def check_kinds(config) -> None:
  """Raises UserError for a field of ``config`` (a dataclass), or of a config in one of its
  fields, whose value does not have the annotated type (``train.steps='10'``, a float for an
  int, a string for ``ModelConfig.d_model``)."""
  check_fields(type(config), {f.name: getattr(config, f.name) for f in dataclasses.fields(config)})
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
      check_kinds(value)


def check_fields(cls, values: dict) -> None:
  """``check_kinds`` for field values of the dataclass ``cls`` given as a dict (gin bindings)."""
  hints = typing.get_type_hints(cls)
  prefix = "train" if issubclass(cls, RunConfig) else cls.__name__
  for name, value in values.items():
    if name in hints and not _matches(value, hints[name]):
      raise UserError(_kind_message(f"{prefix}.{name}", value, hints[name]))


def _kind_message(where: str, value, hint) -> str:
  shown = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
  return (f"{where}={value!r} is a {type(value).__name__}; expected {shown}; fix the binding "
          f"--gin.{where}")


def _matches(value, hint) -> bool:
  origin = typing.get_origin(hint)
  if hint is typing.Any or hint is inspect.Parameter.empty:
    return True
  if origin in (typing.Union, types.UnionType):
    return any(_matches(value, h) for h in typing.get_args(hint))
  if hint is type(None):
    return value is None
  if hint is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if hint is int:
    return isinstance(value, int) and not isinstance(value, bool)
  cls = origin if isinstance(origin, type) else hint
  if cls in (tuple, list):   # gin writes lists where a tuple is meant, and the configs accept them
    return isinstance(value, (tuple, list))
  return isinstance(value, cls) if isinstance(cls, type) else True

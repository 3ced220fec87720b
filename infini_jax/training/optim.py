"""The optimizer: AdamW or Adafactor, warmup + decay, clipping, weight-decay masks and gate rates.

One optax chain for both optimizers, read top to bottom as the update is made:

  clip by global norm -> precondition (Adam moments | Adafactor factored RMS) -> + weight decay
  (masked) -> x -schedule(step) -> x gate_lr_multiplier on the gates only

so there is one schedule, and the gates beta get ``learning_rate * gate_lr_multiplier`` and no
weight decay. PAPER.md ("Gate stuck at its start") is why: with the model's small learning rate
and weight decay, beta stays where it started.

Parameters are picked by regular expressions searched in their '/'-joined key path, e.g.
``blocks/attn/beta``; the masks are computed from the pytree the optimizer is given (nested dicts or
an ``nnx.State``). Given the (abstract) parameters up front, ``make_optimizer`` checks that every
pattern picks something (:func:`check_patterns`), so a misspelt one stops the run at startup.
"""

import dataclasses
import logging
import re

import jax
import jax.numpy as jnp
import optax

from infini_jax import trees
from infini_jax.errors import UserError, check_matches, check_regex

log = logging.getLogger("infini_jax")

NAMES = ("adamw", "adafactor")
SCHEDULES = ("cosine", "linear", "rsqrt", "constant")
# The defaults name kinds of parameters that not every model has (q/k/v biases ``b_q``... only with
# qkv_bias, gates only with memory="infini"), so only patterns the user sets must match something.
DEFAULT_GATE_PATTERN = "beta"
DEFAULT_NO_DECAY_PATTERNS = ("norm", "scale", r"/b_\w+$", "beta")   # norms, biases, gates


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """What the optimizer does; gin binds it as ``OptimizerConfig`` (see commands/gin_flags.py).

  Attributes:
    name: "adamw" or "adafactor" (optax's Adafactor: factored second moments with decay rate 0.8,
      update RMS clipped to 1 per leaf, steps relative to each leaf's RMS; b1, b2 and eps are
      AdamW's only).
    learning_rate: the peak, reached at the end of the linear warmup.
    schedule: after warmup, "cosine" (to ``end_lr_fraction`` at ``total_steps``), "linear" (the
      same end), "rsqrt" (``lr * sqrt(warmup / step)``, no horizon) or "constant".
    warmup_steps: linear warmup from 0; 0 starts at the peak.
    total_steps: the decay horizon, normally the run's steps; after it the rate stays at its end.
    end_lr_fraction: the final rate of "cosine" and "linear" as a fraction of the peak.
    weight_decay: decoupled (AdamW-style: ``lr * weight_decay * param``), on every leaf that
      matches none of ``no_decay_patterns``.
    clip_norm: global-norm clipping of the gradients; None turns it off.
    gate_lr_multiplier: the gates' learning rate is ``learning_rate * gate_lr_multiplier``.
    gate_pattern: a leaf whose path matches this regex is a gate.
    no_decay_patterns: leaves whose path matches any of these regexes get no weight decay; the
      default exempts the norms' scales, the biases (``b_q``, ``b_k``, ``b_v``) and the gates.
  """
  name: str = "adamw"
  learning_rate: float = 3e-4
  schedule: str = "cosine"
  warmup_steps: int = 100
  total_steps: int = 10_000
  end_lr_fraction: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1
  clip_norm: float | None = 1.0
  gate_lr_multiplier: float = 100.0
  gate_pattern: str = DEFAULT_GATE_PATTERN
  no_decay_patterns: tuple[str, ...] = DEFAULT_NO_DECAY_PATTERNS

  def __post_init__(self):
    # gin passes lists where a tuple is written in Python; keep the config hashable.
    if isinstance(self.no_decay_patterns, list):
      object.__setattr__(self, "no_decay_patterns", tuple(self.no_decay_patterns))
    _check_choice("name", self.name, NAMES)
    _check_choice("schedule", self.schedule, SCHEDULES)
    _check("learning_rate", self.learning_rate, self.learning_rate > 0, "must be > 0")
    _check("warmup_steps", self.warmup_steps, _is_int(self.warmup_steps) and self.warmup_steps >= 0,
           "must be an integer >= 0")
    _check("total_steps", self.total_steps, _is_int(self.total_steps) and self.total_steps >= 1,
           "must be an integer >= 1")
    _check("end_lr_fraction", self.end_lr_fraction, 0 <= self.end_lr_fraction <= 1,
           "must be in [0, 1]")
    for key in ("b1", "b2"):
      value = getattr(self, key)
      _check(key, value, 0 <= value < 1, "must be in [0, 1)")
    _check("eps", self.eps, self.eps > 0, "must be > 0")
    _check("weight_decay", self.weight_decay, self.weight_decay >= 0, "must be >= 0")
    _check("clip_norm", self.clip_norm, self.clip_norm is None or self.clip_norm > 0,
           "must be > 0 or None (no clipping)")
    _check("gate_lr_multiplier", self.gate_lr_multiplier, self.gate_lr_multiplier > 0,
           "must be > 0")
    _check("no_decay_patterns", self.no_decay_patterns, isinstance(self.no_decay_patterns, tuple),
           'must be a tuple of regexes, e.g. ("norm", "bias")')
    for key, pattern in [("gate_pattern", self.gate_pattern)] + [
        ("no_decay_patterns", p) for p in self.no_decay_patterns]:
      check_regex(pattern, f"optimizer.{key}", f"OptimizerConfig.{key}")


def make_schedule(cfg: OptimizerConfig) -> optax.Schedule:
  """The learning rate at each step: linear warmup from 0 to the peak, then ``cfg.schedule``."""
  peak, warmup = cfg.learning_rate, cfg.warmup_steps
  # A run shorter than its warmup (a smoke test) simply ends while still warming up.
  decay_steps = max(cfg.total_steps - warmup, 1)
  if cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_lr_fraction)
  elif cfg.schedule == "linear":
    after = optax.linear_schedule(peak, peak * cfg.end_lr_fraction, decay_steps)
  elif cfg.schedule == "rsqrt":
    timescale = max(warmup, 1)
    # Continuous at the end of warmup; counted from step 0 of the run, not of the decay.
    after = lambda t: peak * jnp.sqrt(timescale / jnp.maximum(t + warmup, timescale))
  else:
    after = optax.constant_schedule(peak)
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def make_optimizer(cfg: OptimizerConfig, params=None) -> optax.GradientTransformation:
  """The optax chain of ``cfg`` (see the module docstring for its order).

  ``params`` is optional: the masks are computed from whatever pytree ``init``/``update`` see. Given
  one (abstract shapes do), :func:`check_patterns` runs first: a pattern that matches no parameter
  raises, and the leaves picked as gates and as exempt from weight decay are logged.
  """
  if params is not None:
    check_patterns(cfg, params)
  gates = lambda tree: gate_mask(tree, cfg.gate_pattern)
  not_gates = lambda tree: jax.tree.map(lambda g: not g, gates(tree))
  parts = []
  if cfg.clip_norm is not None:
    parts.append(optax.clip_by_global_norm(cfg.clip_norm))
  if cfg.name == "adamw":
    parts.append(optax.scale_by_adam(cfg.b1, cfg.b2, cfg.eps))
  else:
    parts += [optax.scale_by_factored_rms(), optax.clip_by_block_rms(1.0),
              # Adafactor's steps relative to the parameter's RMS (at least 1e-3) would freeze a
              # gate that starts at 0: gates step by their learning rate directly.
              optax.masked(optax.scale_by_param_block_rms(), not_gates)]
  if cfg.weight_decay > 0:
    parts.append(optax.add_decayed_weights(
        cfg.weight_decay, mask=lambda tree: decay_mask(tree, cfg.no_decay_patterns)))
  parts.append(optax.scale_by_learning_rate(make_schedule(cfg)))
  if cfg.gate_lr_multiplier != 1.0:
    parts.append(optax.masked(optax.scale(cfg.gate_lr_multiplier), gates))
  return optax.chain(*parts)


def gate_mask(params, pattern: str):
  """A pytree of bools like ``params``: True where the leaf's path matches ``pattern``."""
  regex = re.compile(pattern)
  return jax.tree_util.tree_map_with_path(lambda path, _: bool(regex.search(trees.path_name(path))),
                                          params)


def decay_mask(params, patterns):
  """A pytree of bools like ``params``: True (decay) where the path matches none of ``patterns``."""
  regexes = [re.compile(p) for p in patterns]
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not any(r.search(trees.path_name(path)) for r in regexes), params)


def check_patterns(cfg: OptimizerConfig, params) -> None:
  """Raises UserError when ``gate_pattern`` or a ``no_decay_patterns`` entry set by the user
  matches no leaf of ``params`` (a pytree, abstract or not), naming the pattern, the parameters
  and the gin key; then logs which leaves are gates and which get no weight decay."""
  names = [trees.path_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  matches = lambda pattern: [n for n in names if re.search(pattern, n)]
  checked = [("gate_pattern", cfg.gate_pattern, (DEFAULT_GATE_PATTERN,), "correct it")] + [
      ("no_decay_patterns", p, DEFAULT_NO_DECAY_PATTERNS, "correct or remove it")
      for p in cfg.no_decay_patterns]
  for key, pattern, defaults, fix in checked:
    if pattern not in defaults:
      check_matches(pattern, names, f"optimizer.{key}", "of the model",
                    f"{fix} (gin: OptimizerConfig.{key})")
  gate_names = matches(cfg.gate_pattern)
  exempt = [n for n, d in zip(names, jax.tree.leaves(decay_mask(params, cfg.no_decay_patterns)))
            if not d]
  if not gate_names and cfg.gate_lr_multiplier != 1.0:
    log.info("the model has no gates (%r matches nothing): gate_lr_multiplier=%g has no effect",
             cfg.gate_pattern, cfg.gate_lr_multiplier)
  log.info("optimizer %s: gates (lr x %g): %s; no weight decay: %s", cfg.name,
           cfg.gate_lr_multiplier, ", ".join(gate_names) or "none", ", ".join(exempt) or "none")


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _check(key: str, value, ok: bool, requirement: str) -> None:
  if not ok:
    raise UserError(f"optimizer.{key}={value!r} {requirement} (gin: OptimizerConfig.{key})")


def _check_choice(key: str, value, allowed: tuple) -> None:
  if value not in allowed:
    raise UserError(f'optimizer.{key}="{value}" is not one of {", ".join(allowed)} '
                    f"(gin: OptimizerConfig.{key})")

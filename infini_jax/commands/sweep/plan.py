"""A sweep's plan: the sweep file (gin syntax) -> named runs with their bindings and flags."""

import dataclasses
import hashlib
import itertools
import json
import math
import re
import shlex

import numpy as np

from infini_jax.commands.gin_flags import ConfigError

KINDS = ("grid", "random", "list")
SETTINGS = ("SWEEP_KIND", "SWEEP_SAMPLES", "SWEEP_SEED", "SWEEP_RUNS")
DISTRIBUTIONS = ("uniform", "loguniform", "randint")
# Short names for run names; anything else is its last component, lower case.
ABBREVIATIONS = {"learning_rate": "lr", "warmup_steps": "warmup", "gate_lr_multiplier": "gate_lr",
                 "batch_size": "bs", "train_steps": "steps", "weight_decay": "wd"}


@dataclasses.dataclass(frozen=True)
class GinText:
  """A gin reference or macro in a sweep value (``@SyntheticData()``, ``%SEQ_LEN``), as text."""
  text: str


class _Delegate:
  def configurable_reference(self, scoped_name, evaluate):
    return GinText(f"@{scoped_name}{'()' if evaluate else ''}")

  def macro(self, name):
    return GinText(f"%{name}")


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  bindings: dict   # binding name -> Python value (or GinText)


def read_sweep_file(path: str) -> dict:
  """The settings and the swept bindings: {"kind", "axes": {name: list | (dist, a, b)}, ...}."""
  from gin import config_parser
  try:
    with open(path) as f:
      text = f.read()
  except OSError as e:
    raise ConfigError(f"--sweep_file={path}: {e.strerror}") from None
  # ``loguniform(a, b)`` is not a gin literal; it becomes the tuple ("loguniform", a, b).
  text = re.sub(r"(?<![\w.\"'])(" + "|".join(DISTRIBUTIONS) + r")\s*\(", r'("\1", ', text)
  settings, axes = {}, {}
  try:
    for st in config_parser.ConfigParser(text, _Delegate()):
      where = f"{path}:{st.location.line_num}"
      if not isinstance(st, config_parser.BindingStatement):
        raise ConfigError(f"{where}: only `sweep.NAME = [values]` and {', '.join(SETTINGS)} "
                          f"statements belong in a sweep file")
      head, _, rest = st.selector.partition(".")
      if not st.scope and not st.arg_name:
        if st.selector not in SETTINGS:
          raise ConfigError(f"{where}: unknown setting {st.selector}; the settings are "
                            f"{', '.join(SETTINGS)}, and bindings to vary are written "
                            f"sweep.{st.selector} = [values]")
        settings[st.selector] = st.value
      elif head == "sweep":
        name = ".".join(p for p in (rest, st.arg_name) if p)
        axes[f"{st.scope}/{name}" if st.scope else name] = _axis(st.value, where, name)
      else:
        raise ConfigError(f"{where}: write the bindings to vary as sweep.NAME = [values] "
                          f"(e.g. sweep.{st.selector}.{st.arg_name} = [...])")
  except ConfigError:
    raise
  except Exception as e:   # gin's parser raises SyntaxError, tokenize.TokenError, ValueError
    raise ConfigError(f"--sweep_file={path}: {type(e).__name__}: {e}") from None
  kind = settings.get("SWEEP_KIND", "list" if "SWEEP_RUNS" in settings else "grid")
  if kind not in KINDS:
    raise ConfigError(f"{path}: SWEEP_KIND={kind!r} is not one of {', '.join(KINDS)}")
  spec = {"kind": kind, "axes": axes, "samples": settings.get("SWEEP_SAMPLES"),
          "seed": settings.get("SWEEP_SEED", 0), "runs": settings.get("SWEEP_RUNS")}
  if kind == "list":
    runs = spec["runs"]
    if axes or not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
      raise ConfigError(f"{path}: a list sweep is SWEEP_RUNS = [{{\"NAME\": value, ...}}, ...] "
                        f"and no sweep.NAME lines")
  elif not axes:
    raise ConfigError(f"{path}: nothing to sweep; add lines like "
                      f"sweep.LEARNING_RATE = [1e-3, 3e-3]")
  if kind == "grid" and any(not isinstance(v, list) for v in axes.values()):
    raise ConfigError(f"{path}: a grid needs value lists; ranges like loguniform(a, b) need "
                      f'SWEEP_KIND = "random"')
  if kind == "random" and not (isinstance(spec["samples"], int) and spec["samples"] > 0):
    raise ConfigError(f"{path}: a random sweep needs SWEEP_SAMPLES = <number of runs>")
  return spec


def _axis(value, where: str, name: str):
  if isinstance(value, list) and value:
    return value
  if (isinstance(value, tuple) and len(value) == 3 and value[0] in DISTRIBUTIONS
      and all(isinstance(v, (int, float)) for v in value[1:]) and value[1] < value[2]):
    if value[0] == "loguniform" and value[1] <= 0:
      raise ConfigError(f"{where}: loguniform needs 0 < low < high")
    if value[0] == "randint" and not all(isinstance(v, int) for v in value[1:]):
      raise ConfigError(f"{where}: randint needs integer bounds")
    return value
  raise ConfigError(f"{where}: sweep.{name} must be a non-empty list of values or "
                    f"uniform(low, high) / loguniform(low, high) / randint(low, high)")


def plan(spec: dict) -> list:
  """The runs of a sweep, in order, with unique names."""
  axes = spec["axes"]
  if spec["kind"] == "grid":
    combos = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
  elif spec["kind"] == "random":
    rng = np.random.default_rng(spec["seed"])
    combos = [{name: _draw(rng, axis) for name, axis in axes.items()}
              for _ in range(spec["samples"])]
  else:
    combos = [dict(r) for r in spec["runs"]]
  names, runs = set(), []
  for combo in combos:
    name = run_name(combo)
    base, k = name, 2
    while name in names:
      name, k = f"{base}_{k}", k + 1
    names.add(name)
    runs.append(Run(name, combo))
  return runs


def _draw(rng, axis):
  if isinstance(axis, list):
    return axis[int(rng.integers(len(axis)))]
  dist, low, high = axis
  if dist == "randint":
    return int(rng.integers(low, high + 1))
  x = math.exp(rng.uniform(math.log(low), math.log(high))) if dist == "loguniform" else \
      rng.uniform(low, high)
  return float(f"{x:.3g}")


def run_name(bindings: dict) -> str:
  """``{"LEARNING_RATE": 0.001, "WARMUP_STEPS": 10}`` -> ``lr1e-3_warmup10`` (filesystem-safe)."""
  if not bindings:
    return "base"
  keys = {name: _short_key(name) for name in bindings}
  clashing = {k for k in keys.values() if list(keys.values()).count(k) > 1}
  parts = []
  for name, value in bindings.items():
    key = keys[name] if keys[name] not in clashing else name.lower()
    parts.append(re.sub(r"[^A-Za-z0-9.+-]+", "-", f"{key}{_short_value(value)}").strip("-"))
  name = "_".join(parts)
  if len(name) > 100:
    name = f"{name[:90]}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"
  return name


def _short_key(name: str) -> str:
  last = re.split(r"[./]", name)[-1].lower()
  return ABBREVIATIONS.get(last, last)


def _short_value(value) -> str:
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  if isinstance(value, float):
    if value == int(value) and abs(value) < 1e4:
      return str(int(value))
    if abs(value) < 0.1 or abs(value) >= 1e4:
      mantissa, exponent = f"{value:.2e}".split("e")
      return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:.3g}"
  if isinstance(value, GinText):
    return value.text.strip("@%()")
  return str(value) if isinstance(value, (bool, int, str)) else gin_literal(value)


def gin_literal(value) -> str:
  """A Python value as gin text (strings double-quoted, so shell-quoted flags stay readable)."""
  if isinstance(value, GinText):
    return value.text
  if isinstance(value, str):
    return json.dumps(value)
  if isinstance(value, float) and not math.isfinite(value):
    if math.isnan(value):
      raise ConfigError("gin has no literal for NaN")
    return "1e999" if value > 0 else "-1e999"
  if isinstance(value, list):
    return "[" + ", ".join(gin_literal(v) for v in value) + "]"
  if isinstance(value, tuple):
    return "(" + ", ".join(gin_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  if isinstance(value, dict):
    return "{" + ", ".join(f"{gin_literal(k)}: {gin_literal(v)}" for k, v in value.items()) + "}"
  return repr(value)


def shell_line(argv: list) -> str:
  """A command line as one types it: words quoted only where needed, after a --flag='s "=".

  (The launchers print commands the same way.)
  """
  words = []
  for word in argv:
    flag = re.match(r"--[\w.-]+=", word)
    if re.fullmatch(r"[\w@%+=:,./-]+", word) or not flag:
      words.append(shlex.quote(word))
    else:
      words.append(flag.group(0) + shlex.quote(word[flag.end():]))
  return " ".join(words)


def binding_flags(bindings: dict) -> list:
  return [f"--gin.{name}={gin_literal(value)}" for name, value in bindings.items()]

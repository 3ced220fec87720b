"""Logical axis names -> mesh axes: the one place sharding decisions are made.

Every parameter carries ``logical_axes`` metadata (e.g. ``("embed", "mlp")``) and activations are
constrained by logical names through :func:`constrain`. The rules that map logical names to the
mesh axes ``data``, ``fsdp``, ``tensor`` are data (gin binds them); :func:`use_rules` activates them.
Without an active mesh and rules, :func:`constrain` does nothing, so the model runs unchanged on one
device.
"""

import contextlib
import threading

import jax
from flax import linen

# (logical name, mesh axes) pairs in order of precedence; a mesh axis is used once per array.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("seq", None),
    ("layers", None),
)

_active = threading.local()


@contextlib.contextmanager
def use_rules(rules):
  """Activates logical-axis ``rules`` for :func:`constrain` inside the block."""
  previous = getattr(_active, "rules", None)
  _active.rules = tuple(rules)
  try:
    yield
  finally:
    _active.rules = previous


def logical_to_spec(names, rules=None) -> jax.sharding.PartitionSpec:
  """PartitionSpec for an array whose dimensions have the logical ``names``."""
  rules = rules if rules is not None else (getattr(_active, "rules", None) or DEFAULT_RULES)
  return linen.logical_to_mesh_axes(tuple(names), rules)


def constrain(x: jax.Array, names) -> jax.Array:
  """``with_sharding_constraint`` by logical names; a no-op without an active mesh and rules."""
  rules = getattr(_active, "rules", None)
  if not rules or jax.sharding.get_abstract_mesh().empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names, rules))

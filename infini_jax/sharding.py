"""Logical axis names -> mesh axes: the one place sharding decisions are made.

Every parameter carries ``logical_axes`` metadata (e.g. ``("embed", "mlp")``) and activations are
constrained by logical names through :func:`constrain`. The rules that map logical names to the
mesh axes ``data``, ``fsdp``, ``tensor`` are data (gin binds them, ``MeshConfig.rules``);
:func:`activate` makes a mesh and its rules current together. Without a mesh, :func:`constrain`
does nothing (one device: nothing to shard); with a mesh but no rules it is an error, so a
computation never traces half-sharded by accident.
"""

import contextlib
import dataclasses
import threading

import jax
from flax import linen

from infini_jax import trees
from infini_jax.errors import UserError

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
def _use_rules(rules):
  previous = getattr(_active, "rules", None)
  _active.rules = tuple(rules)
  try:
    yield
  finally:
    _active.rules = previous


@contextlib.contextmanager
def activate(mesh: jax.sharding.Mesh, rules):
  """Makes ``mesh`` current and ``rules`` active: jit-traced code inside is sharded by them."""
  with jax.set_mesh(mesh), _use_rules(rules):
    yield


def logical_to_spec(names, rules=None) -> jax.sharding.PartitionSpec:
  """PartitionSpec for an array whose dimensions have the logical ``names``."""
  rules = rules if rules is not None else (getattr(_active, "rules", None) or DEFAULT_RULES)
  return linen.logical_to_mesh_axes(tuple(names), rules)


def constrain(x: jax.Array, names) -> jax.Array:
  """``with_sharding_constraint`` by logical names under the active mesh and rules.

  A no-op without a mesh (one device); an error under a mesh made current without rules
  (``jax.set_mesh`` alone): trace inside :func:`activate` instead.
  """
  if jax.sharding.get_abstract_mesh().empty:
    return x
  rules = getattr(_active, "rules", None)
  if not rules:
    raise RuntimeError(f"sharding.constrain({tuple(names)}) under a mesh without logical-axis "
                       f"rules: trace the computation inside sharding.activate(mesh, rules)")
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names, rules))


MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh sizes (one may be -1: all remaining devices) and the logical-axis rules."""
  data: int = 1
  fsdp: int = -1
  tensor: int = 1
  rules: tuple = DEFAULT_RULES

  def build(self, devices=None) -> jax.sharding.Mesh:
    return make_mesh(self.data, self.fsdp, self.tensor, devices)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices=None) -> jax.sharding.Mesh:
  """A mesh with axes (data, fsdp, tensor); one size may be -1 for "all remaining devices"."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise UserError(f"mesh sizes data={data}, fsdp={fsdp}, tensor={tensor}: at most one may be -1")
  known = 1
  for s in sizes:
    known *= s if s != -1 else 1
  if -1 in sizes:
    if len(devices) % known:
      raise UserError(f"{len(devices)} devices cannot be split into mesh data={data}, fsdp={fsdp}, "
                      f"tensor={tensor}: {len(devices)} is not a multiple of {known}; set "
                      f"MeshConfig sizes whose product divides {len(devices)}")
    sizes[sizes.index(-1)] = len(devices) // known
  if sizes[0] * sizes[1] * sizes[2] != len(devices):
    raise UserError(f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs "
                    f"{sizes[0] * sizes[1] * sizes[2]} devices, but {len(devices)} are present; "
                    f"set one of the sizes to -1 to take the rest")
  return jax.make_mesh(tuple(sizes), MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def _axis_size(mesh, axes) -> int:
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  size = 1
  for a in axes:
    size *= mesh.shape[a]
  return size


def named_sharding(mesh, shape, names, rules, what: str) -> jax.sharding.NamedSharding:
  """NamedSharding for an array of ``shape`` with logical ``names``; checks divisibility."""
  spec = logical_to_spec(names, rules)
  for dim, (size, axes) in enumerate(zip(shape, tuple(spec) + (None,) * len(shape))):
    n = _axis_size(mesh, axes)
    if size % n:
      raise UserError(
          f"{what}: dimension {dim} ({names[dim]}) of size {size} is not divisible by mesh axes "
          f"{axes} of size {n}; change the mesh sizes or the sharding rule for '{names[dim]}'")
  return jax.sharding.NamedSharding(mesh, spec)


def param_shardings(abstract_params, mesh, rules):
  """Shardings for an nnx.State of parameters carrying ``logical_axes`` metadata -> pure dict."""
  from flax import nnx

  def one(path, variable):
    names = variable.get_metadata().get("logical_axes") or (None,) * len(variable.shape)
    what = "parameter " + trees.path_name(path)
    return named_sharding(mesh, variable.shape, names, rules, what)

  shardings = jax.tree_util.tree_map_with_path(
      one, abstract_params, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(shardings)


def batch_sharding(mesh, rules, global_batch: int) -> jax.sharding.NamedSharding:
  """Sharding of a ``[batch, seq]`` input batch: batch over the axes the rules give 'batch'."""
  return named_sharding(mesh, (global_batch, 1), ("batch", "seq"), rules,
                        "the global batch size")


def replicated(mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def follow_params(abstract_tree, abstract_params, params_shardings, mesh):
  """Shardings for a pytree (e.g. optimizer state) whose subtrees mirror the params.

  A leaf whose key path ends with a parameter's path and has that parameter's shape gets the
  parameter's sharding; everything else (step counts, factored second moments) is replicated.
  """
  by_path = {}
  for (path, a), s in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0],
                          jax.tree.leaves(params_shardings)):
    by_path[trees.key_names(path)] = (a.shape, s)

  def one(path, leaf):
    keys = trees.key_names(path)
    for start in range(len(keys)):
      shape, s = by_path.get(keys[start:], (None, None))
      if s is not None and shape == getattr(leaf, "shape", None):
        return s
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(one, abstract_tree)

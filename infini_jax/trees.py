"""Names of pytree leaves, and nested dicts to and from ``{key tuple: leaf}``."""

import jax


def key_names(path) -> tuple[str, ...]:
  """``("blocks", "attn", "beta")`` for a jax key path; an nnx Variable's trailing ``.value``
  (a ``GetAttrKey``) is dropped, so a parameter has the same name in an nnx.State and a dict."""
  names = tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
  if len(path) > 1 and isinstance(path[-1], jax.tree_util.GetAttrKey) and names[-1] == "value":
    names = names[:-1]
  return names


def path_name(path) -> str:
  """``"blocks/attn/beta"`` for a jax key path (see :func:`key_names`)."""
  return "/".join(key_names(path))


def flatten(tree: dict, prefix: tuple = ()) -> dict:
  """``{key tuple: leaf}`` of a nested dict."""
  out = {}
  for k, v in tree.items():
    out.update(flatten(v, prefix + (k,)) if isinstance(v, dict) else {prefix + (k,): v})
  return out


def nest(pairs) -> dict:
  """The nested dict of ``(key tuple, leaf)`` pairs (or a ``{key tuple: leaf}`` dict)."""
  out = {}
  for keys, value in (pairs.items() if isinstance(pairs, dict) else pairs):
    node = out
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = value
  return out

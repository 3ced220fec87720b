"""The package's layout: a library that imports no entry point, and no import cycle.

Every ``import`` statement of every module is read (function-level ones included, since a lazy
import is still a dependency), resolved to the module it names, and checked:
- the library (everything but ``infini_jax.commands`` and the thin ``python -m`` modules) never
  imports the command layer;
- the module graph has no cycle.
"""

import ast
import os
import pkgutil

import infini_jax

PACKAGE_DIR = os.path.dirname(infini_jax.__file__)
ENTRY_POINTS = {"train", "eval", "eval_passkey", "eval_ppl", "sweep", "convert", "generate"}


def modules() -> dict:
  """{module name: source file} for every module of the package."""
  found = {"infini_jax": infini_jax.__file__}
  for info in pkgutil.walk_packages([PACKAGE_DIR], "infini_jax."):
    spec = info.module_finder.find_spec(info.name)
    found[info.name] = spec.origin
  return found


def imports(name: str, path: str, known: dict) -> set:
  """The package's modules that ``name`` imports anywhere in its source."""
  out = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:   # relative: resolve against this module's package
        package = name.split(".")[:len(name.split(".")) - node.level
                                    + (1 if path.endswith("__init__.py") else 0)]
        base = ".".join(package + ([base] if base else []))
      targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                 for alias in node.names]
    else:
      continue
    out |= {t for t in targets if t in known and t != name}
  return out


def graph() -> dict:
  known = modules()
  return {name: imports(name, path, known) for name, path in known.items()}


def is_command_layer(name: str) -> bool:
  return (name == "infini_jax.commands" or name.startswith("infini_jax.commands.")
          or name.split(".", 1)[-1] in ENTRY_POINTS)


def test_the_walk_sees_the_package():
  g = graph()
  assert {"infini_jax.training.trainer", "infini_jax.commands.train", "infini_jax.train",
          "infini_jax.model.attention", "infini_jax.data.pipeline"} <= set(g)
  assert "infini_jax.training.trainer" in g["infini_jax.commands.train"]
  assert "infini_jax.commands.train" in g["infini_jax.train"]


def test_no_library_module_imports_the_command_layer():
  g = graph()
  wrong = sorted(f"{name} imports {', '.join(sorted(filter(is_command_layer, deps)))}"
                 for name, deps in g.items()
                 if not is_command_layer(name) and any(map(is_command_layer, deps)))
  assert not wrong, "\n".join(wrong)


def find_cycle(g: dict) -> list | None:
  """One cycle of ``g`` as a list of names (first == last), or None."""
  state = {}   # name -> "open" while on the DFS stack, "done" after
  stack = []

  def visit(name):
    state[name] = "open"
    stack.append(name)
    for dep in sorted(g.get(name, ())):
      if state.get(dep) == "open":
        return stack[stack.index(dep):] + [dep]
      if dep not in state and (cycle := visit(dep)):
        return cycle
    stack.pop()
    state[name] = "done"
    return None

  for name in sorted(g):
    if name not in state and (cycle := visit(name)):
      return cycle
  return None


def test_find_cycle_finds_one():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
  cycle = find_cycle(graph())
  assert cycle is None, " -> ".join(cycle)

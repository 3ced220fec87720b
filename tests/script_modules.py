"""The scripts in scripts/ (not a package) as modules, for the tests that call their functions."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name: str):
  """``scripts/<name>.py`` executed as a fresh module named ``name``."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module

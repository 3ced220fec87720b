"""Hugging Face Llama-family weights <-> our checkpoints: a converted checkpoint with the model
config beside it, and the export back to the HF layout (the command is ``python -m
infini_jax.convert``)."""

import dataclasses
import math
import os

import jax

from infini_jax import paths
from infini_jax.hf.llama import (GIN_FIELDS, abstract_params, config_from_hf, config_from_json,
                                 config_to_json, export_hf, load_hf_params, read_hf_config)
from infini_jax.model import ModelConfig

MODEL_CONFIG_FILE = "model_config.json"


def hf_model_config(hf_dir, recipe: dict, recipe_name: str,
                    overrides: dict | None = None) -> tuple[ModelConfig, dict]:
  """The model of the weights in ``hf_dir`` with a recipe's memory settings (``recipe``, from
  ``recipe_name``) and ``overrides``; returns it and, per field, where its value came from."""
  hf, overrides = read_hf_config(hf_dir), overrides or {}
  cfg = config_from_hf(hf, recipe, **overrides)
  exported = hf.get("infini_attention") or {}
  sources = {}
  for field in (f.name for f in dataclasses.fields(ModelConfig)):
    sources[field] = ("--gin" if field in overrides else
                      "config.json" if field in GIN_FIELDS or field in exported else
                      f"recipe {recipe_name}" if field in recipe else "ModelConfig default")
  return cfg, sources


def describe(cfg: ModelConfig, sources: dict) -> str:
  """``ModelConfig.FIELD = VALUE  # source`` for every field; the gate's start as a share."""
  lines = []
  for field in (f.name for f in dataclasses.fields(ModelConfig)):
    note = sources.get(field, "ModelConfig default")
    if field == "gate_init" and cfg.memory == "infini":
      note += (f"; sigmoid({cfg.gate_init:g}) = {100 / (1 + math.exp(-cfg.gate_init)):.2g} % of "
               f"each output is the memory read at the start")
    lines.append(f"  ModelConfig.{field} = {getattr(cfg, field)!r}   # {note}")
  return "\n".join(lines)


def convert(hf_dir, out_dir, cfg: ModelConfig, *, mesh=None, rules=None) -> dict:
  """HF weights in ``hf_dir`` -> a checkpoint (step 0, ``{"params": ...}``) in ``out_dir``.

  Returns the load report.
  """
  from infini_jax.checkpoint import Checkpointer
  params, report = load_hf_params(hf_dir, cfg, abstract_params(cfg, mesh, rules))
  with Checkpointer(out_dir, save_every=1, keep_last=1, async_save=False) as ckpt:
    if ckpt.all_steps():
      raise FileExistsError(f"{out_dir} already holds checkpoint steps {ckpt.all_steps()}; "
                            f"convert into an empty directory")
    ckpt.save(0, {"params": params}, data_position=0, force=True)
    ckpt.wait()
  if jax.process_index() == 0:
    paths.write_text(os.path.join(os.fspath(out_dir), MODEL_CONFIG_FILE), config_to_json(cfg))
  return report


def export_checkpoint(checkpoint_dir, hf_dir, cfg: ModelConfig | None = None,
                      step: int | None = None) -> None:
  """Our checkpoint (newest good step, or ``step``) -> the HF layout in ``hf_dir``."""
  from infini_jax.checkpoint import restore_params
  if cfg is None:
    cfg = read_model_config(checkpoint_dir)
  params, report = restore_params(checkpoint_dir, abstract_params(cfg), step=step)
  if report["missing"]:
    raise ValueError(f"checkpoint {checkpoint_dir} lacks parameters {report['missing']} of the "
                     f"model config")
  export_hf(params, cfg, hf_dir)


def read_model_config(checkpoint_dir) -> ModelConfig:
  """The ModelConfig that :func:`convert` wrote beside a checkpoint."""
  path = os.path.join(os.fspath(checkpoint_dir), MODEL_CONFIG_FILE)
  if not paths.isfile(path):
    raise FileNotFoundError(f"{path} not found: pass the run's model config with --gin_file "
                            f"(e.g. {checkpoint_dir}/config.gin)")
  return config_from_json(paths.read_text(path))

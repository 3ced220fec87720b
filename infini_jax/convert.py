"""Hugging Face Llama-family weights <-> our checkpoints, from the command line.

  python -m infini_jax.convert --from_hf=DIR --out=CKPT [--gin.ModelConfig.FIELD=VALUE ...]
      Reads config.json + *.safetensors lazily into every device's shard (all devices, fsdp), adds
      the gates beta at ModelConfig.gate_init, and writes a checkpoint that train.init_from (and
      checkpoint.restore_params) reads, plus CKPT/model_config.json. The model is the one
      config.json describes, with the memory settings of the continual recipe
      (configs/continual/llama3_2_1b.gin: segment_len, memory, update_rule, gate_init), and
      --gin.ModelConfig.* bindings override either; every value and where it came from is logged.
  python -m infini_jax.convert --from_hf=DIR --out=CKPT --gin_file=F [--gin.NAME=VALUE ...]
      The same with gin's ModelConfig (e.g. the run's gin file), which must match the weights.
  python -m infini_jax.convert --print_gin --from_hf=DIR
      Prints ``ModelConfig.FIELD = VALUE`` gin bindings for the model the weights describe.
  python -m infini_jax.convert --to_hf=DIR --checkpoint=CKPT [--step=N] [--gin_file=F ...]
      Writes our checkpoint (a converted one or a run's model_dir) in the HF layout: config.json,
      model.safetensors, the gates in infini_gates.safetensors, and a README.md naming them. The model
      config comes from --gin_file (e.g. the run's config.gin), else CKPT/model_config.json
      (with --gin.ModelConfig.* bindings overriding it).

``train.init_from="hf:DIR"`` reads HF weights directly through :func:`load_hf_params`.
"""

import argparse
import dataclasses
import logging
import math
import os
import sys

import jax

from infini_jax import paths
from infini_jax.hf.llama import (GIN_FIELDS, INFINI_FIELDS, MissingTensorError,
                                 UnexpectedTensorError, abstract_params, config_from_hf,
                                 config_from_json, config_to_json, export_hf, gin_bindings,
                                 load_hf_params, read_hf_config)
from infini_jax.errors import UserError
from infini_jax.model import ModelConfig

__all__ = ["convert", "load_hf_params", "export_checkpoint", "hf_model_config", "recipe_settings",
           "MissingTensorError", "UnexpectedTensorError", "main"]

log = logging.getLogger("infini_jax.convert")

MODEL_CONFIG_FILE = "model_config.json"
# The continual-pretraining recipe whose memory settings (INFINI_FIELDS) a conversion without a
# gin file takes; llama3_8b.gin shares them.
RECIPE = "continual/llama3_2_1b.gin"


def recipe_settings() -> dict:
  """segment_len, memory, update_rule and gate_init as configs/``RECIPE`` sets them."""
  from infini_jax import cli
  cli.parse([RECIPE], [], [])
  bound = cli.bindings_of("ModelConfig")
  return {k: bound[k] for k in INFINI_FIELDS}


def hf_model_config(hf_dir, overrides: dict | None = None) -> tuple[ModelConfig, dict]:
  """The model of the weights in ``hf_dir`` with the recipe's memory settings and ``overrides``;
  returns it and, per field, where its value came from."""
  hf, overrides = read_hf_config(hf_dir), overrides or {}
  recipe = recipe_settings()
  cfg = config_from_hf(hf, recipe, **overrides)
  exported = hf.get("infini_attention") or {}
  sources = {}
  for field in (f.name for f in dataclasses.fields(ModelConfig)):
    sources[field] = ("--gin" if field in overrides else
                      "config.json" if field in GIN_FIELDS or field in exported else
                      f"recipe {RECIPE}" if field in recipe else "ModelConfig default")
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


def convert(hf_dir, out_dir, cfg: ModelConfig | None = None, *, mesh=None, rules=None) -> dict:
  """HF weights in ``hf_dir`` -> a checkpoint (step 0, ``{"params": ...}``) in ``out_dir``.

  Returns the load report. ``cfg`` None: :func:`hf_model_config` (config.json + the recipe).
  """
  from infini_jax.checkpoint import Checkpointer
  if cfg is None:
    cfg, _ = hf_model_config(hf_dir)
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


def main(argv=None) -> None:
  try:
    _main(sys.argv[1:] if argv is None else argv)
  except UserError:
    raise
  except (ValueError, FileNotFoundError, FileExistsError) as e:   # config and input errors
    raise UserError(f"{type(e).__name__}: {e}") from None


def _main(argv) -> None:
  from infini_jax import cli
  files, paths, bindings, rest = cli.split_flags(argv)
  overrides = {}
  if files or bindings:
    cli.parse(files, paths, bindings)
    overrides = cli.bindings_of("ModelConfig")
  parser = argparse.ArgumentParser(prog="python -m infini_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--from_hf", help="Hugging Face model directory to read")
  parser.add_argument("--out", help="checkpoint directory to write (with --from_hf)")
  parser.add_argument("--print_gin", action="store_true", help="print ModelConfig gin bindings")
  parser.add_argument("--to_hf", help="Hugging Face directory to write (with --checkpoint)")
  parser.add_argument("--checkpoint", help="our checkpoint directory to export (with --to_hf)")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default newest)")
  args = parser.parse_args(rest)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  if args.print_gin:
    if not args.from_hf:
      parser.error("--print_gin needs --from_hf=DIR")
    sys.stdout.write(gin_bindings(config_from_hf(read_hf_config(args.from_hf)), args.from_hf))
  elif args.from_hf:
    if not args.out:
      parser.error("--from_hf needs --out=DIR (or --print_gin)")
    from infini_jax import distributed
    from infini_jax.sharding import make_mesh
    distributed.initialize()
    if files:
      cfg, sources = ModelConfig(**overrides), {k: "--gin_file" for k in overrides}
    else:
      cfg, sources = hf_model_config(args.from_hf, overrides)
    log.info("model for %s:\n%s", args.from_hf, describe(cfg, sources))
    report = convert(args.from_hf, args.out, cfg, mesh=make_mesh(fsdp=-1))
    if report["initialised"]:
      log.info("initialised (not in the HF weights): %s", ", ".join(report["initialised"]))
    if report["extra"]:
      log.info("not used: %s", ", ".join(report["extra"]))
    log.info("wrote %s", args.out)
  elif args.to_hf:
    if not args.checkpoint:
      parser.error("--to_hf needs --checkpoint=DIR")
    cfg = (ModelConfig(**overrides) if files else
           dataclasses.replace(read_model_config(args.checkpoint), **overrides))
    export_checkpoint(args.checkpoint, args.to_hf, cfg, args.step)
    log.info("wrote %s", args.to_hf)
  else:
    parser.error("give --from_hf=DIR with --out=DIR or --print_gin, or --to_hf=DIR --checkpoint=DIR")


if __name__ == "__main__":
  from infini_jax import command
  command.run(main)

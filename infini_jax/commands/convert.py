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

``train.init_from="hf:DIR"`` reads HF weights directly through ``hf.llama.load_hf_params``; the
conversion itself is ``hf.convert``.
"""

import argparse
import dataclasses
import logging
import sys

from infini_jax.commands import gin_flags
from infini_jax.errors import UserError
from infini_jax.hf import convert
from infini_jax.hf.llama import INFINI_FIELDS, config_from_hf, gin_bindings, read_hf_config
from infini_jax.model import ModelConfig
from infini_jax.run import check_fields

log = logging.getLogger("infini_jax.convert")

# The continual-pretraining recipe whose memory settings (INFINI_FIELDS) a conversion without a
# gin file takes; llama3_8b.gin shares them.
RECIPE = "continual/llama3_2_1b.gin"


def recipe_settings() -> dict:
  """segment_len, memory, update_rule and gate_init as configs/``RECIPE`` sets them (and
  empty_memory_gate where it does; else ModelConfig's default)."""
  gin_flags.parse([RECIPE], [], [])
  bound = gin_flags.bindings_of("ModelConfig")
  return {k: bound[k] for k in INFINI_FIELDS if k in bound}


def main(argv=None) -> None:
  try:
    _main(sys.argv[1:] if argv is None else argv)
  except UserError:
    raise
  except (ValueError, FileNotFoundError, FileExistsError) as e:   # config and input errors
    raise UserError(f"{type(e).__name__}: {e}") from None


def _main(argv) -> None:
  files, paths, bindings, rest = gin_flags.split_flags(argv)
  overrides = {}
  if files or bindings:
    gin_flags.parse(files, paths, bindings)
    overrides = gin_flags.bindings_of("ModelConfig")
    check_fields(ModelConfig, overrides)   # gin does no type checks
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
      cfg, sources = convert.hf_model_config(args.from_hf, recipe_settings(), RECIPE, overrides)
    log.info("model for %s:\n%s", args.from_hf, convert.describe(cfg, sources))
    report = convert.convert(args.from_hf, args.out, cfg, mesh=make_mesh(fsdp=-1))
    if report["initialised"]:
      log.info("initialised (not in the HF weights): %s", ", ".join(report["initialised"]))
    if report["extra"]:
      log.info("not used: %s", ", ".join(report["extra"]))
    log.info("wrote %s", args.out)
  elif args.to_hf:
    if not args.checkpoint:
      parser.error("--to_hf needs --checkpoint=DIR")
    cfg = (ModelConfig(**overrides) if files else
           dataclasses.replace(convert.read_model_config(args.checkpoint), **overrides))
    convert.export_checkpoint(args.checkpoint, args.to_hf, cfg, args.step)
    log.info("wrote %s", args.to_hf)
  else:
    parser.error("give --from_hf=DIR with --out=DIR or --print_gin, or --to_hf=DIR --checkpoint=DIR")

"""Passkey retrieval at any length: ``python -m infini_jax.eval_passkey`` with the trainer's flags.

    python -m infini_jax.eval_passkey --gin_file=configs/passkey_tiny.gin \\
        --segments=16,64,256,1024 --depths=start,middle,end --samples=20

Own flags (the rest are gin flags, as for the trainer; without ``--gin_file`` the run's
``config.gin`` next to ``--checkpoint`` is read):
  --checkpoint=DIR     a run directory, its ``checkpoints/`` or one step (default MODEL_DIR's)
  --lengths=2K,32K,1M  input lengths in tokens (K = 1024, M = 1024**2), or
  --segments=8,32,512  input lengths in segments of the model; as in training, the prompt and
                       its answer fill them, so the answer ends the last segment
  --depths=start,middle,end   or fractions in [0, 1] (where the key sentence sits in the filler)
  --samples=N          prompts per (length, depth) cell (default 10); their keys are evaluation
                       seeds, never seen in training
  --digits=N           digits of the key (default: the run's DataConfig.passkey_digits)
  --filler_file=F      a text file tiled as filler instead of the paper's sentences
  --filler=NAME        a named filler: paper (the training filler), plays_validation (the
                       Shakespeare plays never trained on), glaciers or bread (bundled prose of
                       other kinds; see data/fillers.py)
  --knockout           also evaluate every prompt with the memory never written (it stays empty),
                       printed beside the normal result ("normal/knock-out") and in the JSON
                       (``knocked_out``: the same fields as the result)
  --batch_size=N       prompts streamed together (default 16)
  --chunk_segments=N   segments per prefill call (default 16; any length uses one program)
  --out=DIR            where passkey.json and passkey.png go (default RUN_DIR/eval, next to
                       the run's checkpoints/)

The evaluation itself is ``evals.passkey``.
"""

import json
import os
import sys


from infini_jax import paths
from infini_jax.commands import gin_flags, runs
from infini_jax.data import fillers, text_files
from infini_jax.data.passkey import DEPTHS
from infini_jax.evals import passkey, restore

FLAGS = ("checkpoint", "lengths", "segments", "depths", "samples", "digits", "filler_file",
         "filler", "batch_size", "chunk_segments", "out")
SWITCHES = ("knockout",)


def parse_depth(text: str, flag: str) -> tuple[str, float]:
  """``"start"`` -> ("start", 0.0); ``"0.25"`` -> ("0.25", 0.25)."""
  if text in DEPTHS:
    return text, DEPTHS[text]
  try:
    value = float(text)
  except ValueError:
    value = -1.0
  if not 0.0 <= value <= 1.0:
    raise gin_flags.ConfigError(f"{flag}: depth {text!r} is not one of {', '.join(DEPTHS)} or "
                          f"a fraction in [0, 1]")
  return text, value


def main(argv=None) -> dict:
  argv = sys.argv[1:] if argv is None else argv
  own, rest = runs.split_own_flags(argv, FLAGS, SWITCHES)
  # Our own flags first: a bad one stops before the model is restored.
  if "lengths" in own and "segments" in own:
    raise gin_flags.ConfigError("give prompt lengths either as --lengths (tokens) or --segments")
  flag = "segments" if "segments" in own else "lengths"
  counts = runs.parse_list(runs.last(own, flag, "2K,8K,32K"), f"--{flag}",
                                 runs.parse_count)
  depths = runs.parse_list(runs.last(own, "depths", "start,middle,end"), "--depths",
                                 parse_depth)
  if "filler_file" in own and "filler" in own:
    raise gin_flags.ConfigError("give the filler either as --filler=NAME or --filler_file=PATH")
  filler_text = None
  if "filler_file" in own:
    filler_text = text_files.read_text(own["filler_file"][-1], "--filler_file")
  elif "filler" in own:
    filler_text = fillers.filler_text(own["filler"][-1])
  knockout = "knockout" in own
  gin_flags.setup_logging()
  loaded = runs.load(rest, runs.last(own, "checkpoint"))
  model, data_cfg = loaded.model, loaded.config.data
  n = model.cfg.segment_len
  lengths = [c * n for c in counts] if flag == "segments" else counts
  ints = {k: runs.parse_count(runs.last(own, k, str(default)), f"--{k}")
          for k, default in (("samples", 10), ("batch_size", 16), ("chunk_segments", 16),
                             ("digits", getattr(data_cfg, "passkey_digits", 5)))}
  out = runs.last(own, "out") or runs.default_out(loaded.checkpoint)
  encode = restore.encoder(data_cfg)
  try:
    with loaded.sharded():
      args = (model, encode, lengths, depths, ints["samples"], ints["digits"], filler_text,
              ints["batch_size"], ints["chunk_segments"])
      result = passkey.evaluate(*args)
      knocked_out = passkey.evaluate(*args, knockout=True) if knockout else None
  except ValueError as e:   # a length too short for the prompt
    raise gin_flags.ConfigError(str(e)) from None
  cfg = model.cfg
  result.update(checkpoint=loaded.checkpoint, step=loaded.step, segment_len=n,
                memory=cfg.memory, update_rule=cfg.update_rule,
                filler_file=runs.last(own, "filler_file"),
                filler=runs.last(own, "filler", None if "filler_file" in own else "paper"),
                knocked_out=knocked_out)
  paths.write_text(os.path.join(out, "passkey.json"), json.dumps(result, indent=1))
  memory = cfg.memory if cfg.memory == "none" else f"{cfg.memory}/{cfg.update_rule}"
  title = (f"passkey accuracy, memory={memory}, step {loaded.step}, "
           f"{ints['samples']} x {ints['digits']}-digit keys per cell")
  passkey.heat_map(result, n, os.path.join(out, "passkey.png"), title)
  print(f"{title}\n{loaded.checkpoint}\n{passkey.table(result, n, knocked_out)}", flush=True)
  print(f"wrote {os.path.join(out, 'passkey.json')} and passkey.png", flush=True)
  return result

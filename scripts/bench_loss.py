"""Compiled memory of the train step with the whole-segment loss and with the chunked loss.

    python scripts/bench_loss.py [--vocab 32768] [--batch 8] [--segment_len 512] [--chunks 0,512,128]

``step.build``'s real train step (AdamW, one device, remat per segment) is compiled for each
``loss_chunk`` and ``memory_analysis()`` printed: temporaries and peak (arguments + outputs +
temporaries - aliased). Nothing runs, so big vocabularies fit a laptop; the figures are XLA:CPU's.
"""

import argparse
import json

import jax

from infini_jax.training import optim, step
from infini_jax import sharding
from infini_jax.training.compiled_memory import peak_bytes
from infini_jax.model import ModelConfig


def measure(cfg: ModelConfig, batch: int, seq_len: int, chunk: int) -> dict:
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  with sharding.activate(mesh, sharding.DEFAULT_RULES):
    fns = step.build(cfg, optim.make_optimizer(optim.OptimizerConfig()), mesh,
                     sharding.DEFAULT_RULES, batch, seq_len, loss_chunk=chunk)
    m = fns.train.lower(fns.abstract_state, fns.abstract_batch).compile().memory_analysis()
  return {"loss_chunk": chunk, "temp_bytes": m.temp_size_in_bytes,
          "peak_bytes": peak_bytes(m)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--vocab", type=int, default=32768)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--segment_len", type=int, default=512)
  parser.add_argument("--segments", type=int, default=2)
  parser.add_argument("--d_model", type=int, default=256)
  parser.add_argument("--chunks", default="0,512,128")
  parser.add_argument("--json")
  args = parser.parse_args()
  cfg = ModelConfig(vocab_size=args.vocab, num_layers=2, d_model=args.d_model, num_heads=4,
                    num_kv_heads=2, mlp_dim=4 * args.d_model, segment_len=args.segment_len)
  logits = args.batch * args.segment_len * args.vocab * 4
  print(f"vocab {args.vocab}, batch {args.batch} x {args.segments} segments of {args.segment_len}, "
        f"d_model {args.d_model}: float32 logits of one segment {logits / 2**20:.0f} MiB")
  rows = []
  for chunk in (int(c) for c in args.chunks.split(",")):
    rows.append(measure(cfg, args.batch, args.segments * args.segment_len, chunk))
    print(f"  loss_chunk {chunk:5d}: temporaries {rows[-1]['temp_bytes'] / 2**20:8.1f} MiB, "
          f"peak {rows[-1]['peak_bytes'] / 2**20:8.1f} MiB")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()

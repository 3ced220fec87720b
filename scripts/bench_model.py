"""Forward+backward throughput, peak memory and compile time of the model by number of segments.

    python scripts/bench_model.py [--segments 1,4,16,64] [--json out.json]

For the infini model and the local-only baseline (``memory="none"``) at each number of segments:
tokens/s of a jitted value_and_grad of the LM loss, the compiled program's peak memory
(``memory_analysis``: arguments + outputs + temporaries, which grows only with the carry if remat
works), compile time, and the compressive memory's size in numbers per sequence.
"""

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
from flax import nnx

from infini_jax.training.compiled_memory import peak_bytes
from infini_jax.model import ModelConfig
from infini_jax.training.step import abstract_model, loss_sums


def bench(cfg: ModelConfig, batch: int, segments: int, repeats: int) -> dict:
  graphdef, abstract = abstract_model(cfg)
  params = nnx.to_pure_dict(nnx.state(nnx.merge(graphdef, jax.tree.map(
      lambda v: jnp.zeros(v.shape, v.dtype), abstract)), nnx.Param))
  params = jax.tree.map(lambda x: x + 0.01, params)
  seq = segments * cfg.segment_len
  tokens = jax.random.randint(jax.random.key(0), (batch, seq + 1), 0, cfg.vocab_size)
  data = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
          "loss_mask": jnp.ones((batch, seq), jnp.float32)}

  def loss(params, data):
    sums = jax.tree.map(jnp.sum, loss_sums(nnx.merge(graphdef, params), data))
    return sums["nll"] / sums["weight"]

  fn = jax.jit(jax.value_and_grad(loss))
  t0 = time.perf_counter()
  compiled = fn.lower(params, data).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  peak = peak_bytes(mem)
  jax.block_until_ready(compiled(params, data))       # warm-up
  t0 = time.perf_counter()
  for _ in range(repeats):
    out = compiled(params, data)
  jax.block_until_ready(out)
  seconds = (time.perf_counter() - t0) / repeats
  return {"memory": cfg.memory, "segments": segments, "tokens": batch * seq,
          "tokens_per_s": batch * seq / seconds, "step_s": seconds, "compile_s": compile_s,
          "peak_bytes": peak, "temp_bytes": mem.temp_size_in_bytes if mem else None,
          "state_numbers_per_sequence": cfg.memory_state_size()}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--segments", default="1,4,16,64")
  p.add_argument("--segment_len", type=int, default=128)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--d_model", type=int, default=128)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--kv_heads", type=int, default=2)
  p.add_argument("--mlp_dim", type=int, default=384)
  p.add_argument("--vocab", type=int, default=384)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--json", help="write the rows to this file")
  args = p.parse_args()
  base = ModelConfig(vocab_size=args.vocab, num_layers=args.layers, d_model=args.d_model,
                     num_heads=args.heads, num_kv_heads=args.kv_heads, mlp_dim=args.mlp_dim,
                     segment_len=args.segment_len, dtype=args.dtype)
  rows = []
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; batch {args.batch}, "
        f"segment {args.segment_len}, {args.layers} layers, d_model {args.d_model}")
  print(f"{'memory':>7} {'segs':>5} {'tokens':>8} {'tokens/s':>10} {'step ms':>9} "
        f"{'compile s':>9} {'peak MiB':>9} {'temp MiB':>9} {'state numbers':>13}")
  for memory in ("infini", "none"):
    for segments in (int(s) for s in args.segments.split(",")):
      row = bench(dataclasses.replace(base, memory=memory), args.batch, segments, args.repeats)
      rows.append(row)
      mib = lambda b: f"{b / 2**20:9.1f}" if b is not None else f"{'n/a':>9}"
      print(f"{memory:>7} {segments:>5} {row['tokens']:>8} {row['tokens_per_s']:>10,.0f} "
            f"{1e3 * row['step_s']:>9.1f} {row['compile_s']:>9.2f} {mib(row['peak_bytes'])} "
            f"{mib(row['temp_bytes'])} {row['state_numbers_per_sequence']:>13,}", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"device": jax.devices()[0].device_kind, "args": vars(args), "rows": rows}, f,
                indent=1)


if __name__ == "__main__":
  main()

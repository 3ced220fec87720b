"""The matmul kernels' own rate on the shapes of the peer preset's train step, in jax or in torch.

    .venv/bin/python scripts/bench_matmul.py [--json out.json]                  # jax (XLA)
    /tmp/peer/bin/python scripts/bench_matmul.py --framework torch [--json ...] # torch (oneDNN)

``bench_train.py --preset peer`` compares the step with a 2048 x 2048 matmul. The step's products
are smaller: per segment, ``batch x segment = 512`` rows through projections of d_model 512 (q, k,
v, o: 512 -> 512; the GLU MLP: 512 -> 1365 twice and 1365 -> 512; the logits 512 -> 256), each run
three ways (forward ``x W``, the input gradient ``dy W^T``, the weight gradient ``x^T dy``), and the
local attention's batched ``[256, 64] x [64, 256]`` and ``[256, 256] x [256, 64]`` products over 2 x
8 heads (the whole square, as the peer computes it), and the memory's ``[256, 64] x [64, 64]``. This
script times each product alone (best of ``--reps``, operands made before the clock) and prints its
GFLOP/s and, weighted by how often the step runs it, the time the step's matmuls need at these
kernels' rates: the least time a step can take in this framework on this machine, whatever its
layout. The same shapes in torch give the peer's figure.

Imports only the chosen framework (the peer's environment has torch and no jax).
"""

import argparse
import json
import time

ROWS, D_MODEL, MLP, HEAD_DIM, SEGMENT = 512, 512, 1365, 64, 256   # rows: batch 2 x segment 256
BATCH_HEADS = 16                                              # batch 2 x 8 heads
LAYERS, SEGMENTS, VOCAB = 4, 8, 256
# (name, m, k, n, uses per segment)
PROJECTIONS = [("qkvo 512->512", ROWS, D_MODEL, D_MODEL, 4 * LAYERS),
               ("mlp in 512->1365", ROWS, D_MODEL, MLP, 2 * LAYERS),
               ("mlp out 1365->512", ROWS, MLP, D_MODEL, LAYERS),
               ("logits 512->256", ROWS, D_MODEL, VOCAB, 1)]


def products():
  """``[(name, kind, flops, uses per step, operand shapes, (contract_a, contract_b))]``.

  ``contract_a/b`` is the contracted dimension of each 2-D operand (1/0 is ``a @ b``); a leading
  batch dimension, where present, is the batch of a batched matmul.
  """
  out = []
  for name, m, k, n, per in PROJECTIONS:
    flops = 2 * m * k * n
    out += [(name, "forward x W", flops, per * SEGMENTS, ((m, k), (k, n)), (1, 0)),
            (name, "input grad dy W^T", flops, per * SEGMENTS, ((m, n), (k, n)), (1, 1)),
            (name, "weight grad x^T dy", flops, per * SEGMENTS, ((m, k), (m, n)), (0, 0))]
  uses = LAYERS * SEGMENTS
  b = BATCH_HEADS
  flops = 2 * b * SEGMENT * SEGMENT * HEAD_DIM
  # scores q k^T and the values p v, forward; backward: dp = do v^T, dv = p^T do, dq = ds k,
  # dk = ds^T q: six products of this size per layer and segment.
  out += [("attention", "q k^T (and dp, like it)", flops, 2 * uses,
           ((b, SEGMENT, HEAD_DIM), (b, SEGMENT, HEAD_DIM)), (2, 2)),
          ("attention", "p v (and dq, like it)", flops, 2 * uses,
           ((b, SEGMENT, SEGMENT), (b, SEGMENT, HEAD_DIM)), (2, 1)),
          ("attention", "p^T do (and dk, like it)", flops, 2 * uses,
           ((b, SEGMENT, SEGMENT), (b, SEGMENT, HEAD_DIM)), (1, 1))]
  # The memory's products (read sigma(q) M, the delta rule's sigma(k) M, the write sigma(k)^T v;
  # forward and two gradients each) are all [256, 64] x [64, 64] in size; timed as one of them.
  flops = 2 * b * SEGMENT * HEAD_DIM * HEAD_DIM
  out += [("memory", "sigma(q) M (and 8 like it)", flops, 9 * uses,
           ((b, SEGMENT, HEAD_DIM), (b, HEAD_DIM, HEAD_DIM)), (2, 1))]
  return out


def timer_jax():
  import jax
  import jax.numpy as jnp

  def make(shapes, contract):
    a, b = (jax.random.normal(jax.random.key(i), s, jnp.float32) for i, s in enumerate(shapes))
    batch = ((0,), (0,)) if len(shapes[0]) == 3 else ((), ())
    f = jax.jit(lambda a, b: jax.lax.dot_general(a, b, (((contract[0],), (contract[1],)), batch)))
    return lambda: jax.block_until_ready(f(a, b))             # the product, [*batch, m, n]
  return f"jax {jax.__version__} ({jax.devices()[0].device_kind})", make


def timer_torch():
  import torch

  def make(shapes, contract):
    a, b = (torch.randn(*s) for s in shapes)
    batched = len(shapes[0]) == 3
    # Views, as torch's autograd passes them: a transposed operand is a flag to the GEMM.
    last = lambda t, c: t if c == t.dim() - 1 else t.transpose(-1, -2)
    first = lambda t, c: t if c == t.dim() - 2 else t.transpose(-1, -2)
    a, b = last(a, contract[0]), first(b, contract[1])
    f = torch.bmm if batched else torch.mm
    return lambda: f(a, b)
  return f"torch {torch.__version__}, {torch.get_num_threads()} threads", make


def best_seconds(run, reps: int) -> float:
  run()
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - t0)
  return best


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--framework", choices=("jax", "torch"), default="jax")
  p.add_argument("--reps", type=int, default=20)
  p.add_argument("--json", help="write the rows to this file")
  args = p.parse_args(argv)
  label, make = timer_jax() if args.framework == "jax" else timer_torch()
  square = best_seconds(make(((2048, 2048), (2048, 2048)), (1, 0)), max(3, args.reps // 4))
  square_rate = 2 * 2048 ** 3 / square
  print(f"{label}: 2048 x 2048 matmul {square_rate / 1e9:.1f} GFLOP/s")
  print(f"{'product':>18} {'kind':>26} {'GFLOP/s':>8} {'of 2048^2':>9} {'uses':>5} "
        f"{'ms a step':>9}")
  rows, total_s, total_flops = [], 0.0, 0
  for name, kind, flops, uses, shapes, contract in products():
    s = best_seconds(make(shapes, contract), args.reps)
    rows.append(dict(product=name, kind=kind, shapes=shapes, flops=flops, uses=uses, seconds=s,
                     flops_per_s=flops / s))
    total_s += uses * s
    total_flops += uses * flops
    print(f"{name:>18} {kind:>26} {flops / s / 1e9:8.1f} {flops / s / square_rate:9.0%} {uses:>5} "
          f"{1e3 * uses * s:9.0f}", flush=True)
  print(f"the step's matmuls: {total_flops / 1e9:.0f} GFLOP in {total_s:.2f} s at these rates "
        f"({total_flops / total_s / 1e9:.1f} GFLOP/s, {total_flops / total_s / square_rate:.0%} of "
        f"the 2048^2 rate); at most {ROWS * SEGMENTS / total_s:,.0f} tokens/s")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(framework=label, square_flops_per_s=square_rate, rows=rows,
                     step_matmul_seconds=total_s, step_matmul_flops=total_flops), f, indent=1)
  return rows


if __name__ == "__main__":
  main()

"""The peer port's train step on CPU: lucidrains' infini-transformer-pytorch, for bench_train's
``--preset peer`` comparison.

    python -m venv /tmp/peer && /tmp/peer/bin/pip install torch==2.13.0 infini-transformer-pytorch==0.2.1
    /tmp/peer/bin/python scripts/bench_peer.py [--json out.json]

Runs in its own environment (torch is no dependency of infini_jax and this file imports nothing of
it); ``scripts/bench_train.py --preset peer --peer_python /tmp/peer/bin/python`` runs it right after
our step and prints the ratio. The configuration is the peer's own example, grown to the sizes of
``bench_train.PRESETS["peer"]``: 4 layers, d_model 512, 8 heads of 64, GLU MLP 1365, vocabulary
256, segments of 256, 8 segments a sequence, batch 2, delta rule, AdamW, float32. Its
``InfiniTransformerWrapper`` steps through the segments and backpropagates every two segments
(its default); one timed step is the wrapper's forward-and-backward and one AdamW update.

Prints one line of figures and, with ``--json``, writes them. The same process also times a
2048 x 2048 float32 matmul in torch, the rate its step is compared with.
"""

import argparse
import json
import time

import torch
from infini_transformer_pytorch import InfiniTransformer, InfiniTransformerWrapper

CONFIG = dict(num_tokens=256, dim=512, depth=4, dim_head=64, heads=8, use_mem_delta_rule=True)
SEGMENT_LEN, SEGMENTS, BATCH = 256, 8, 2


def matmul_flops_per_s(n: int = 2048, reps: int = 10) -> float:
  """The best of ``reps`` timed ``n x n`` float32 matmuls, in FLOP/s."""
  a, b = torch.randn(n, n), torch.randn(n, n)
  a @ b
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    a @ b
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--steps", type=int, default=5, help="timed steps")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
  p.add_argument("--json")
  args = p.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  model = InfiniTransformer(**CONFIG)
  wrapper = InfiniTransformerWrapper(model, segment_length=SEGMENT_LEN)
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
  seq = torch.randint(0, CONFIG["num_tokens"], (BATCH, SEGMENT_LEN * SEGMENTS + 1))

  def step():
    loss = wrapper(seq, backward=True)
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()

  for _ in range(args.warmup):
    step()
  t0 = time.perf_counter()
  for _ in range(args.steps):
    loss = step()
  seconds = (time.perf_counter() - t0) / args.steps
  tokens = BATCH * SEGMENT_LEN * SEGMENTS
  row = {"impl": f"infini-transformer-pytorch (torch {torch.__version__})",
         "threads": torch.get_num_threads(), "tokens_per_step": tokens, "step_s": seconds,
         "tokens_per_s": tokens / seconds, "loss": loss,
         "parameters": sum(x.numel() for x in model.parameters()),
         "matmul_flops_per_s": matmul_flops_per_s()}
  print(f"peer: {row['impl']}, {row['threads']} threads, {row['parameters'] / 1e6:.1f}M params: "
        f"step {1e3 * seconds:.1f} ms, {row['tokens_per_s']:,.0f} tokens/s; "
        f"matmul {row['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(row, f, indent=1)


if __name__ == "__main__":
  main()

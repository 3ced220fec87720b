"""Train-step throughput and MFU, the infini model and the memory="none" baseline side by side.

    python scripts/bench_train.py --preset cpu [--json out.json]          # a reduced config
    python3 scripts/bench_train.py --preset 1b --json out.json            # Llama-3.2-1B shape, GPU
    python scripts/bench_train.py --gin_file=configs/1b.gin [--gin.NAME=VALUE ...]

The real train step (``step.build``: sharded, jitted, donated state, AdamW from ``optim``) runs on a
mesh over the present devices (data=1, fsdp=all, tensor=1 for a preset; the gin file's MeshConfig
otherwise) with synthetic batches (``inputs.SyntheticPipeline``), made before the clock starts. For
each model: compile time and compiled peak memory per device, step time, tokens/s, and MFU counted
as MaxText counts it (``flops.train_flops_per_token``: matmuls + causal-half local attention,
x3), without and with the compressive memory's FLOPs, against ``flops.peak_flops_per_device`` (the
chip's dense bf16 peak; on CPU unknown, so n/a unless ``--peak_flops`` is given). "overhead" is how
much slower the infini step is than the baseline's.

gin is imported only for ``--gin_file``, and nothing from ``infini_jax.data`` (TensorFlow, seqio)
at all, so the presets run with a bare JAX install (the GPU image). ``--compile_only`` lowers the
step from abstract inputs and stops: the 1B preset can be checked on a CPU that could not hold it.
``--profile DIR`` traces ``--profile_steps`` more steps of each model with ``jax.profiler`` (open in
TensorBoard or Perfetto) and prints where the time went, by model part and op kind
(``training/op_profile.py``).

The same run times a 2048 x 2048 matmul in the compute dtype on the present devices, the rate a
step's model FLOPs are compared with ("of mm"): on a CPU, whose peak is not known, it is the
ceiling a train step could approach. ``--preset peer`` is the shape of lucidrains'
infini-transformer-pytorch benchmark (``scripts/bench_peer.py``); with ``--peer_python`` (an
interpreter with torch and that package) the peer's step runs right after ours and the ratio of
tokens/s is printed.
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

from infini_jax.training import flops, op_profile, optim
from infini_jax.training.compiled_memory import peak_bytes
from infini_jax.inputs import SyntheticData, SyntheticPipeline
from infini_jax.model import ModelConfig
from infini_jax.model.config import REMAT_POLICIES
from infini_jax.run import RunConfig, build_run

PRESETS = {
    # A few seconds a step on two CPU cores.
    "cpu": dict(model=ModelConfig(vocab_size=512, num_layers=2, d_model=128, num_heads=4,
                                  num_kv_heads=2, mlp_dim=384, segment_len=256,
                                  update_rule="delta", remat="segment"),
                batch=4, seq_len=1024),
    # Llama-3.2-1B's shape (configs/models/llama3_2_1b.gin), segment 2048, inputs of 4096.
    "1b": dict(model=ModelConfig(vocab_size=128256, num_layers=16, d_model=2048, num_heads=32,
                                 num_kv_heads=8, head_dim=64, mlp_dim=8192, segment_len=2048,
                                 rope_theta=500_000.0, norm_eps=1e-5, tie_embeddings=True,
                                 update_rule="delta", dtype="bfloat16", remat="segment_and_layer"),
               batch=8, seq_len=4096),
    # The peer port's shape (scripts/bench_peer.py): 4 layers, d_model 512, 8 heads of 64, GLU MLP
    # 1365, vocabulary 256, 8 segments of 256, batch 2, delta rule, float32.
    # The layers unrolled and the matmul outputs kept (with the defaults, --remat segment
    # --scan_layers true, the step makes about 30 % fewer tokens/s on a CPU; BENCHMARKS §8).
    "peer": dict(model=ModelConfig(vocab_size=256, num_layers=4, d_model=512, num_heads=8,
                                   num_kv_heads=8, head_dim=64, mlp_dim=1365, segment_len=256,
                                   update_rule="delta", remat="save_dots", scan_layers=False),
                 batch=2, seq_len=2048),
}


def bench(config: RunConfig, args, matmul_rate: float | None) -> dict:
  """One model's row: compile time, step time, tokens/s, MFU and, with ``matmul_rate`` (the
  2048^2 matmul's FLOP/s per device), the step's model FLOP rate as a share of it."""
  cfg, batch, seq_len = config.model, config.data.batch_size, config.data.seq_len
  row = {"memory": cfg.memory, "segments": cfg.num_segments(seq_len), "global_batch": batch,
         "seq_len": seq_len, "tokens_per_step": batch * seq_len,
         "flops_per_token": flops.train_flops_per_token(cfg, with_memory=False),
         "flops_per_token_with_memory": flops.train_flops_per_token(cfg, with_memory=True)}
  run = build_run(config)
  fns, devices = run.fns, run.mesh.devices.size
  row["devices"] = devices
  with run.sharded():
    row["parameters"] = int(sum(x.size for x in jax.tree.leaves(fns.abstract_state["params"])))
    t0 = time.perf_counter()
    compiled = fns.train.lower(fns.abstract_state, fns.abstract_batch).compile()
    row["compile_s"] = time.perf_counter() - t0
    m = compiled.memory_analysis()
    if m is not None:
      row["peak_bytes_per_device"] = peak_bytes(m)
      row["temp_bytes_per_device"] = m.temp_size_in_bytes
    if args.compile_only:
      return row

    state = fns.init(jax.random.key(0))
    pipeline = SyntheticPipeline(config.data, cfg.vocab_size, jax.process_index(),
                                 jax.process_count())
    batches = [pipeline.next_global(fns.batch_sharding) for _ in range(2)]
    for i in range(args.warmup):
      state, metrics = compiled(state, batches[i % 2])
      jax.block_until_ready(metrics["loss"])
    t0 = time.perf_counter()
    for i in range(args.steps):
      state, metrics = compiled(state, batches[i % 2])
    row["loss"] = float(metrics["loss"])                 # blocks on the last step
    seconds = (time.perf_counter() - t0) / args.steps
    if args.profile:
      row["profile_ms_per_step"] = profile(compiled, state, batches,
                                           f"{args.profile}/{cfg.memory}", args.profile_steps)
  tokens_per_s = batch * seq_len / seconds
  peak = flops.peak_flops_per_device(args.peak_flops)
  per_device = row["flops_per_token"] * tokens_per_s / devices
  per_device_mem = row["flops_per_token_with_memory"] * tokens_per_s / devices
  row.update(step_s=seconds, tokens_per_s=tokens_per_s, tokens_per_s_per_device=tokens_per_s / devices,
             model_flops_per_s_per_device=per_device, peak_flops_per_device=peak,
             mfu=per_device / peak if peak else None,
             mfu_with_memory=per_device_mem / peak if peak else None,
             matmul_flops_per_s_per_device=matmul_rate,
             of_matmul=per_device / matmul_rate if matmul_rate else None)
  return row


def profile(compiled, state, batches, trace_dir: str, steps: int) -> dict:
  """Trace ``steps`` steps, print the op breakdown; ``{"part/kind": ms per step}``."""
  with jax.profiler.trace(trace_dir):
    for i in range(steps):
      state, metrics = compiled(state, batches[i % 2])
    jax.block_until_ready(metrics["loss"])
  traces = [os.path.join(d, f) for d, _, files in os.walk(trace_dir) for f in files
            if f.endswith(".xplane.pb")]
  table = op_profile.breakdown(op_profile.event_seconds(max(traces, key=os.path.getmtime)),
                               op_profile.classify(compiled.as_text()))
  print(op_profile.format_table(table, steps), flush=True)
  return {f"{part}/{kind}": 1e3 * s / steps for (part, kind), s in sorted(table.items())}


def matmul_flops_per_s(dtype, n: int = 2048, reps: int = 10) -> float:
  """The best of ``reps`` timed ``n x n`` matmuls on the default device, in FLOP/s."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, a))
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(matmul(a, a))
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best


def run_peer(python: str, steps: int) -> dict:
  """``scripts/bench_peer.py`` under another interpreter; its JSON row."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "peer.json")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_peer.py")
    subprocess.run([python, script, "--steps", str(steps), "--json", out], check=True)
    with open(out) as f:
      return json.load(f)


def print_rows(rows, header: bool = False):
  if header:
    print(f"{'memory':>7} {'params':>8} {'segs':>4} {'tokens':>7} {'compile s':>9} "
          f"{'peak GiB':>8} {'step ms':>9} {'tokens/s':>10} {'tok/s/dev':>10} {'TFLOP/s':>8} "
          f"{'MFU':>6} {'MFU+mem':>7} {'of mm':>6} {'overhead':>8}")
  for r in rows:
    pct = lambda x: f"{100 * x:5.1f}%" if x is not None else "n/a"
    gib = (f"{r['peak_bytes_per_device'] / 2**30:8.2f}" if r.get("peak_bytes_per_device")
           is not None else f"{'n/a':>8}")
    ran = "step_s" in r
    print(f"{r['memory']:>7} {r['parameters'] / 1e6:7.1f}M {r['segments']:>4} "
          f"{r['tokens_per_step']:>7} {r['compile_s']:>9.1f} {gib} "
          + (f"{1e3 * r['step_s']:>9.1f} {r['tokens_per_s']:>10,.0f} "
             f"{r['tokens_per_s_per_device']:>10,.0f} {r['model_flops_per_s_per_device'] / 1e12:>8.3f} "
             f"{pct(r['mfu']):>6} {pct(r['mfu_with_memory']):>7} {pct(r['of_matmul']):>6} "
             if ran else f"{'-':>9} {'-':>10} {'-':>10} {'-':>8} {'-':>6} {'-':>7} {'-':>6} ")
          + (f"{r['overhead']:>+7.1f}%" if r.get("overhead") is not None else f"{'':>8}"),
          flush=True)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  files, paths, bindings, rest = [], [], [], argv
  if any(a.startswith(("--gin_file=", "--gin_search_paths=", "--gin.")) for a in argv):
    from infini_jax.commands import gin_flags   # imports gin: only when gin flags are given
    files, paths, bindings, rest = gin_flags.split_flags(argv)
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--preset", choices=sorted(PRESETS), help="a built-in config (no gin needed)")
  p.add_argument("--batch", type=int, help="global batch (default: the preset's or gin's)")
  p.add_argument("--seq_len", type=int, help="tokens per example (default: the preset's or gin's)")
  p.add_argument("--segment_len", type=int)
  p.add_argument("--remat", choices=REMAT_POLICIES)
  p.add_argument("--scan_layers", choices=("true", "false"), help="ModelConfig.scan_layers")
  p.add_argument("--attention_impl", choices=("xla", "blocked", "cudnn", "reference"),
                 help="default: cudnn on GPU in bfloat16, else the config's")
  p.add_argument("--memories", default="infini,none", help="which models, in order")
  p.add_argument("--steps", type=int, default=5, help="timed steps")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  p.add_argument("--peak_flops", type=float, help="peak FLOP/s per device (default: by device kind)")
  p.add_argument("--compile_only", action="store_true", help="compile from abstract inputs, stop")
  p.add_argument("--profile", metavar="DIR", help="jax.profiler trace of a few steps per model")
  p.add_argument("--profile_steps", type=int, default=3)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--peer_python", metavar="PYTHON",
                 help="an interpreter with torch and infini-transformer-pytorch: run the peer's "
                      "step (scripts/bench_peer.py) after ours (--preset peer)")
  p.add_argument("--json", help="write the rows to this file")
  args = p.parse_args(rest)
  if bool(files) == bool(args.preset):
    raise SystemExit("give exactly one of --preset and --gin_file (see --help)")
  if args.peer_python and args.preset != "peer":
    raise SystemExit("--peer_python compares with the peer's configuration: add --preset peer")
  if files:
    gin_flags.parse(files, paths, bindings)
    config = gin_flags.run_config()
  else:
    preset = PRESETS[args.preset]
    model = preset["model"]
    config = RunConfig(
        model=model, optimizer=optim.OptimizerConfig(name="adamw", warmup_steps=10,
                                                     total_steps=1000),
        data=SyntheticData(preset["batch"], preset["seq_len"], model.segment_len),
        model_dir="", steps=0)
  overrides = {k: getattr(args, k) for k in ("segment_len", "remat", "attention_impl")
               if getattr(args, k)}
  if args.scan_layers:
    overrides["scan_layers"] = args.scan_layers == "true"
  if ("attention_impl" not in overrides and jax.default_backend() == "gpu"
      and config.model.dtype == "bfloat16"):          # cuDNN flash attention needs bf16/fp16
    overrides["attention_impl"] = "cudnn"
  cfg = dataclasses.replace(config.model, **overrides)
  batch = args.batch or config.data.batch_size
  seq_len = args.seq_len or config.data.seq_len
  data = SyntheticData(batch, seq_len, cfg.segment_len, args.seed)
  config = dataclasses.replace(config, model=cfg, data=data, eval_data=None)
  mesh = config.mesh.build()
  device = jax.devices()[0].device_kind
  print(f"device: {device} x{jax.device_count()} (jax {jax.__version__}), mesh {dict(mesh.shape)}; "
        f"{cfg.num_layers} layers, d_model {cfg.d_model}, vocab {cfg.vocab_size}, {cfg.dtype}, "
        f"segment {cfg.segment_len}, seq {seq_len}, global batch {batch}, remat {cfg.remat}, "
        f"{'scanned' if cfg.scan_layers else 'unrolled'} layers, "
        f"attention {cfg.attention_impl}, update {cfg.update_rule}")
  peak = flops.peak_flops_per_device(args.peak_flops)
  print(f"peak: {f'{peak / 1e12:.0f} TFLOP/s per device' if peak else 'unknown (MFU n/a; pass --peak_flops)'}; "
        f"MFU counts matmuls + causal-half attention x3 (MaxText), MFU+mem adds the memory's FLOPs")
  matmul_rate = (None if args.compile_only
                 else matmul_flops_per_s(cfg.compute_dtype) / jax.local_device_count())
  if matmul_rate:
    print(f"matmul: {matmul_rate / 1e9:.1f} GFLOP/s per device (2048 x 2048, "
          f"{cfg.dtype}); 'of mm' is the step's model FLOP rate as a share of it")
  rows = []
  for i, memory in enumerate(args.memories.split(",")):
    row = bench(dataclasses.replace(config, model=dataclasses.replace(cfg, memory=memory)), args,
                matmul_rate)
    rows.append(row)
    print_rows([row], header=i == 0)
  by = {r["memory"]: r for r in rows}
  if "step_s" in by.get("infini", {}) and "step_s" in by.get("none", {}):
    overhead = 100 * (by["infini"]["step_s"] / by["none"]["step_s"] - 1)
    by["infini"]["overhead"] = overhead
    print(f"memory overhead: the infini step takes {overhead:+.1f}% of the baseline's time")
  peer = run_peer(args.peer_python, args.steps) if args.peer_python else None
  if peer and "step_s" in by.get("infini", {}):
    peer["ratio"] = by["infini"]["tokens_per_s"] / peer["tokens_per_s"]
    print(f"infini_jax / peer: {peer['ratio']:.2f}x tokens/s ({by['infini']['tokens_per_s']:,.0f} "
          f"against {peer['tokens_per_s']:,.0f})")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"device": device, "device_count": jax.device_count(), "jax": jax.__version__,
                 "model": dataclasses.asdict(cfg), "args": vars(args), "gin_files": files,
                 "gin_bindings": [b for _, b in bindings], "rows": rows, "peer": peer}, f, indent=1)
  return rows


if __name__ == "__main__":
  from infini_jax.commands import entry
  entry.run(main)

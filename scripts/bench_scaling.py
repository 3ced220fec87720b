"""Peak memory and time per token against sequence length: streaming inference and training.

    python scripts/bench_scaling.py [--lengths 4K,16K,64K,256K,1M] [--max_full_len 16K]
        [--json out.json] [--plot out.png]

Three models of the same size (``--layers``, ``--d_model``, ...):
  infini  Infini-attention, segments of ``--segment_len`` tokens;
  none    the same with ``memory="none"`` (local attention inside each segment only);
  full    a plain full-attention transformer: ``memory="none"`` with one segment covering the input,
          measured up to ``--max_full_len`` tokens (longer: skipped) and while its compiled peak
          stays under ``--max_bytes`` (more: "does not fit", not run).

(a) inference: ``decode.prefill`` over the sequence in whole-segment chunks at batch 1, the decode
    state carried from chunk to chunk (tokens made chunk by chunk, so nothing of the sequence's
    length is ever allocated); the full model reads its input in one call.
(b) training: ``jax.jit(jax.value_and_grad)`` of ``step.loss_sums``' mean loss over the whole
    sequence, with the model's remat per segment.

Memory, two ways. "compiled": ``memory_analysis()`` of the jitted function (arguments + outputs +
temporaries - aliased); for the streaming loop that is the chunk function's, the same at every
length. "RSS": each measurement runs in its own process, which resets the kernel's high-water mark
(``/proc/self/clear_refs``) after compiling and setting up, and reports the high-water mark
reached while the measured function ran ("RSS peak": the whole process, JAX runtime, parameters
and compiled programs included) and how far it rose above the resident size at the reset
("RSS grow"). On an accelerator, where RSS says little, the JSON also has the device allocator's
peak (``memory_stats()["peak_bytes_in_use"]``, this process being the only user). Next to training memory the script prints
what should grow with length: the carry the segment scan saves for the backward pass (memory state
x segments) and the batch itself (inputs, targets, mask: 12 bytes a token).
"""

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time

MODELS = ("infini", "none", "full")
MODES = ("inference", "train")


def parse_length(text: str) -> int:
  """'4K' -> 4096, '1M' -> 1048576, '3000' -> 3000."""
  m = re.fullmatch(r"(\d+)([KkMm]?)", text.strip())
  if not m:
    raise argparse.ArgumentTypeError(f"{text!r} is not a length like 4096, 4K or 1M")
  return int(m.group(1)) * {"": 1, "k": 2**10, "m": 2**20}[m.group(2).lower()]


def short(n: int) -> str:
  for unit, size in (("M", 2**20), ("K", 2**10)):
    if n % size == 0:
      return f"{n // size}{unit}"
  return str(n)


def model_config(args, model: str, length: int):
  from infini_jax.model import ModelConfig
  base = ModelConfig(vocab_size=args.vocab, num_layers=args.layers, d_model=args.d_model,
                     num_heads=args.heads, num_kv_heads=args.kv_heads, mlp_dim=args.mlp_dim,
                     segment_len=args.segment_len, dtype=args.dtype, remat="segment",
                     attention_impl=args.attention_impl)
  if model == "infini":
    return base
  if model == "none":
    return dataclasses.replace(base, memory="none")
  return dataclasses.replace(base, memory="none", segment_len=length)


# ----------------------------------------------------------------------------- one measurement
# Runs in a child process (``--_child``), so its RSS and its compiled programs are its own.


def _status_kib(key: str) -> int:
  with open("/proc/self/status") as f:
    return int(re.search(key + r":\s+(\d+)", f.read()).group(1))


class _RssWatch:
  """Resident memory growth of this process from ``start()`` to ``growth_bytes()``."""

  def start(self):
    try:
      with open("/proc/self/clear_refs", "w") as f:   # resets VmHWM to the current VmRSS
        f.write("5")
      self.base = _status_kib("VmRSS")
    except OSError:                                    # not Linux, or not allowed
      self.base = None

  def growth_bytes(self):
    return None if self.base is None else 1024 * (_status_kib("VmHWM") - self.base)

  def peak_bytes(self):
    """The process's resident high-water mark since ``start()`` (itself included)."""
    return None if self.base is None else 1024 * _status_kib("VmHWM")


def _peak(compiled):
  from infini_jax.training.compiled_memory import peak_bytes
  return peak_bytes(compiled.memory_analysis())


def _timed(fn, min_seconds: float = 2.0, repeats: int = 3) -> float:
  """Seconds of one ``fn()``: the first run, or if that was short, the best of ``repeats`` more."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  if first >= min_seconds:
    return first
  best = first
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def measure(args, model_name: str, mode: str, length: int) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from infini_jax import decode
  from infini_jax.model import InfiniTransformer
  from infini_jax.training.step import loss_sums

  cfg = model_config(args, model_name, length)
  segments = cfg.num_segments(length)
  model = InfiniTransformer(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  row = {"model": model_name, "mode": mode, "length": length, "segments": segments,
         "state_numbers": cfg.memory_state_size()}
  rss = _RssWatch()

  def tokens_of(i: int, n: int):
    return np.random.default_rng([args.seed, i]).integers(0, cfg.vocab_size, (1, n), np.int32)

  if mode == "inference":
    chunk = cfg.segment_len * (args.chunk_segments if model_name != "full" else 1)
    if length % chunk:
      raise ValueError(f"length {length} is not a multiple of the chunk of {chunk} tokens")

    @jax.jit
    def read_chunk(params, state, tokens):
      return decode.prefill(nnx.merge(graphdef, params), tokens, state=state)

    empty = decode.init_state(model, 1)
    compiled = read_chunk.lower(params, empty, jnp.zeros((1, chunk), jnp.int32)).compile()
    row["compiled_bytes"] = _peak(compiled)
    row["chunk_tokens"] = chunk
    if row["compiled_bytes"] is not None and row["compiled_bytes"] > args.max_bytes:
      return {**row, "status": "does not fit"}

    def stream():
      state, logits = empty, None
      for i in range(length // chunk):
        state, logits = compiled(params, state, tokens_of(i, chunk))
      jax.block_until_ready(logits)

    compiled(params, empty, tokens_of(0, chunk))       # warm-up
    rss.start()
    seconds = _timed(stream)
  else:
    def mean_loss(params, batch):
      sums = jax.tree.map(jnp.sum, loss_sums(nnx.merge(graphdef, params), batch))
      return sums["nll"] / sums["weight"]

    tokens = tokens_of(0, length + 1)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
             "loss_mask": np.ones((1, length), np.float32)}
    batch = jax.device_put(batch)
    train_params = nnx.state(model, nnx.Param)
    compiled = jax.jit(jax.value_and_grad(mean_loss)).lower(train_params, batch).compile()
    row["compiled_bytes"] = _peak(compiled)
    row["carry_bytes"] = 4 * cfg.memory_state_size() * segments       # float32 memory per segment
    row["batch_bytes"] = 12 * length
    if row["compiled_bytes"] is not None and row["compiled_bytes"] > args.max_bytes:
      return {**row, "status": "does not fit"}
    rss.start()
    seconds = _timed(lambda: jax.block_until_ready(compiled(train_params, batch)))
  stats = jax.devices()[0].memory_stats() or {}      # None on CPU; on GPU/TPU the allocator's peak
  row.update(status="ok", seconds=seconds, us_per_token=1e6 * seconds / length,
             rss_growth_bytes=rss.growth_bytes(), rss_peak_bytes=rss.peak_bytes(),
             device_peak_bytes=stats.get("peak_bytes_in_use"))
  return row


# ----------------------------------------------------------------------------- the driver


def run_child(args, model: str, mode: str, length: int) -> dict:
  """One measurement in a fresh process; a timeout or crash becomes the row's status."""
  row = {"model": model, "mode": mode, "length": length}
  cmd = [sys.executable, os.path.abspath(__file__), *args.argv, "--_child", f"{model},{mode},{length}"]
  try:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
  except subprocess.TimeoutExpired:
    return {**row, "status": f"timeout > {args.timeout}s"}
  for line in done.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
  return {**row, "status": f"failed (exit {done.returncode}): {tail[:120]}"}


def mib(b) -> str:
  return f"{b / 2**20:9.1f}" if b is not None else f"{'-':>9}"


def print_table(rows, header: bool = False):
  if header:
    print(f"{'mode':>9} {'model':>6} {'length':>6} {'segs':>5} {'us/token':>9} {'compiled':>9} "
          f"{'x 1st':>6} {'RSS peak':>9} {'RSS grow':>9} {'carry':>9} {'batch':>9}  status")
    print(f"{'':>9} {'':>6} {'':>6} {'':>5} {'':>9} {'MiB':>9} {'':>6} {'MiB':>9} {'MiB':>9} "
          f"{'MiB':>9} {'MiB':>9}")
  for row in rows:
    ok = row.get("status") == "ok"
    us = f"{row['us_per_token']:9.2f}" if ok else f"{'-':>9}"
    ratio = f"{row['ratio_to_first']:6.3f}" if row.get("ratio_to_first") else f"{'-':>6}"
    print(f"{row['mode']:>9} {row['model']:>6} {short(row['length']):>6} "
          f"{row.get('segments', '-'):>5} {us} {mib(row.get('compiled_bytes'))} {ratio} "
          f"{mib(row.get('rss_peak_bytes'))} {mib(row.get('rss_growth_bytes'))} "
          f"{mib(row.get('carry_bytes'))} "
          f"{mib(row.get('batch_bytes'))}  {row['status']}", flush=True)


def plot(rows, path: str):
  from infini_jax import plots
  fig, axes = plots.pyplot().subplots(2, 2, figsize=(11, 8), sharex=True)
  for col, mode in enumerate(MODES):
    for model in MODELS:
      ok = [r for r in rows if r["mode"] == mode and r["model"] == model and r["status"] == "ok"]
      if not ok:
        continue
      x = [r["length"] for r in ok]
      axes[0, col].plot(x, [r["compiled_bytes"] / 2**20 for r in ok], "o-", label=model)
      axes[1, col].plot(x, [r["us_per_token"] for r in ok], "o-", label=model)
    axes[0, col].set_title(f"{mode}: compiled peak memory (MiB)")
    axes[1, col].set_title(f"{mode}: time per token (us)")
    for ax in axes[:, col]:
      ax.set_xscale("log", base=2)
      ax.set_yscale("log")
      ax.grid(True, which="both", alpha=0.3)
      ax.legend()
    axes[1, col].set_xlabel("sequence length (tokens)")
  plots.save(fig, path, dpi=100)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--lengths", default="4K,16K,64K,256K,1M",
                 help="comma-separated sequence lengths (4096, 4K, 1M)")
  p.add_argument("--models", default=",".join(MODELS))
  p.add_argument("--modes", default=",".join(MODES))
  p.add_argument("--max_full_len", type=parse_length, default=parse_length("16K"),
                 help="longest input of the full-attention model; longer ones are skipped")
  p.add_argument("--max_bytes", type=parse_length, default=parse_length("6144M"),
                 help="a compiled peak above this is not run (bytes; 6144M)")
  p.add_argument("--timeout", type=int, default=1200, help="seconds per measurement")
  p.add_argument("--segment_len", type=int, default=2048)
  p.add_argument("--chunk_segments", type=int, default=1, help="segments per prefill call")
  p.add_argument("--layers", type=int, default=1)
  p.add_argument("--d_model", type=int, default=32)
  p.add_argument("--heads", type=int, default=1)
  p.add_argument("--kv_heads", type=int, default=1)
  p.add_argument("--mlp_dim", type=int, default=64)
  p.add_argument("--vocab", type=int, default=256)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--attention_impl", default="xla")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", help="write the rows to this file")
  p.add_argument("--plot", help="write a PNG plot of memory and time per token to this file")
  p.add_argument("--_child", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args._child:
    model, mode, length = args._child.split(",")
    print("RESULT " + json.dumps(measure(args, model, mode, int(length))), flush=True)
    return None
  args.argv = [a for a in argv if a]          # handed on to the children as given
  lengths = [parse_length(s) for s in args.lengths.split(",")]
  models = args.models.split(",")
  modes = args.modes.split(",")
  for name, values, allowed in (("models", models, MODELS), ("modes", modes, MODES)):
    if set(values) - set(allowed):
      raise SystemExit(f"--{name}={','.join(values)}: each must be one of {', '.join(allowed)}")
  import jax
  device = jax.devices()[0].device_kind
  print(f"device: {device}; segment {args.segment_len}, {args.layers} layers, d_model "
        f"{args.d_model}, heads {args.heads}/{args.kv_heads}, mlp {args.mlp_dim}, vocab "
        f"{args.vocab}, {args.dtype}, batch 1")
  print("compiled: memory_analysis peak; x 1st: compiled / the same model's at the shortest "
        "length; RSS peak: the measuring process's resident high-water mark while running; RSS grow: "
        "its rise during the run; carry: memory state x segments")
  rows = []
  first_row = True
  for mode in modes:
    for model in models:
      first = None
      for length in lengths:
        if model == "full" and length > args.max_full_len:
          row = {"model": model, "mode": mode, "length": length,
                 "status": f"skipped (> --max_full_len={short(args.max_full_len)})"}
        else:
          row = run_child(args, model, mode, length)
        if row.get("status") == "ok":
          first = first or row["compiled_bytes"]
          row["ratio_to_first"] = row["compiled_bytes"] / first if first else None
        rows.append(row)
        print_table([row], header=first_row)
        first_row = False
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"device": device, "jax": jax.__version__,
                 "args": {k: v for k, v in vars(args).items() if k not in ("_child", "argv")},
                 "rows": rows}, f, indent=1)
  if args.plot:
    plot(rows, args.plot)
  return rows


if __name__ == "__main__":
  main()

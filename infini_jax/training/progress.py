"""Progress of a run: the log line, TensorBoard summaries and ``metrics.jsonl``, on process 0 only.

The log line: step, loss, learning rate, gradient norm, tokens/s, MFU (with and without the
memory's FLOPs, see flops.py) and the ETA. ``metrics.jsonl`` holds one JSON object per logged
step, the machine-readable record that sweeps and tests read.

Both go through :mod:`infini_jax.paths`, so ``model_dir`` may be a bucket (``gs://...``). There
each ``metrics.jsonl`` line is uploaded as it is logged, and TensorBoard events at most every
``TENSORBOARD_UPLOAD_S`` seconds (a bucket object is rewritten whole; event files grow faster).
"""

import json
import os
import time

import jax
import numpy as np

from infini_jax import paths
from infini_jax.training import events

TENSORBOARD_UPLOAD_S = 60.0


class Progress:
  """Turns per-step metrics (already on the host) into logs and summaries."""

  def __init__(self, model_dir: str, total_steps: int, tokens_per_step: int,
               flops_per_token: tuple[float, float], peak_flops: float | None):
    self.chief = jax.process_index() == 0
    self.total_steps = total_steps
    self.tokens_per_step = tokens_per_step
    self.flops_per_token = flops_per_token   # (with memory, without memory)
    self.peak_total = peak_flops * jax.device_count() if peak_flops else None
    self.writer = None
    self.jsonl = None
    if self.chief:
      from tensorboardX import SummaryWriter
      _route_tensorboard_buckets()
      self.writer = SummaryWriter(os.path.join(model_dir, "tensorboard"))
      self.jsonl = paths.Appender(os.path.join(model_dir, "metrics.jsonl"))
    self._last = None   # (time, step) of the previous log

  def log_train(self, step: int, metrics: dict) -> dict:
    """``metrics`` of the update that produced ``step``; returns the scalars it logged."""
    now = time.perf_counter()
    scalars = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
    if self._last is not None and step > self._last[1]:
      seconds = (now - self._last[0]) / (step - self._last[1])
      scalars["tokens_per_s"] = self.tokens_per_step / seconds
      if self.peak_total:
        scalars["mfu"] = scalars["tokens_per_s"] * self.flops_per_token[0] / self.peak_total
        scalars["mfu_without_memory"] = (scalars["tokens_per_s"] * self.flops_per_token[1]
                                         / self.peak_total)
      scalars["eta_s"] = seconds * (self.total_steps - step)
    self._last = (now, step)
    if self.chief:
      print(self._line(step, scalars), flush=True)
      gates = metrics.get("gates")
      if gates is not None:
        for layer, row in enumerate(np.asarray(gates)):
          for head, value in enumerate(row):
            self.writer.add_scalar(events.gate_tag(layer, head), float(value), step)
      self._write(step, scalars, "train")
    return scalars

  def log_eval(self, step: int, scalars: dict) -> None:
    if self.chief:
      print(f"step {step:>7d} | eval " + " ".join(f"{k} {v:.4f}" for k, v in scalars.items()),
            flush=True)
      self._write(step, scalars, "eval")

  def log_event(self, step: int, **fields) -> None:
    """A non-metric record (failure, preemption) in metrics.jsonl."""
    if self.chief:
      self.jsonl.write(json.dumps({"step": step, **fields}) + "\n")
      self.jsonl.flush()

  def _write(self, step, scalars, kind):
    for k, v in scalars.items():
      self.writer.add_scalar(f"{kind}/{k}", v, step)
    self.writer.flush()
    self.jsonl.write(json.dumps({"step": step, "kind": kind, **scalars}) + "\n")
    self.jsonl.flush()

  def _line(self, step, s):
    parts = [f"step {step:>7d}", f"loss {s['loss']:.4f}"]
    if "learning_rate" in s:
      parts.append(f"lr {s['learning_rate']:.3e}")
    parts.append(f"grad_norm {s['grad_norm']:.3f}")
    if "tokens_per_s" in s:
      parts.append(f"tokens/s {s['tokens_per_s']:,.0f}")
      if "mfu" in s:
        parts.append(f"MFU {100 * s['mfu']:.1f}% ({100 * s['mfu_without_memory']:.1f}% w/o memory)")
      parts.append(f"ETA {_duration(s['eta_s'])}")
    return " | ".join(parts)

  def close(self):
    if self.chief:
      self.writer.close()
      self.jsonl.close()


class _BucketEvents:
  """tensorboardX's writer factory for ``gs://`` logdirs, through paths.Appender (tensorboardX's
  own one needs google-cloud-storage and uploads at every flush)."""

  def open(self, path):
    return paths.Appender(path, TENSORBOARD_UPLOAD_S)

  def directory_check(self, path):
    paths.makedirs(path)


def _route_tensorboard_buckets():
  from tensorboardX import record_writer
  record_writer.register_writer_factory("gs", _BucketEvents())


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"

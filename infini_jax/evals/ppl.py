"""Held-out loss by position in the document: per-position sums over windows of the validation
split, summed by segment and by offset within the segment and bucketed by ``ppl_report``. The
command is ``python -m infini_jax.eval_ppl``."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infini_jax import loss, sharding
from infini_jax.inputs import ExportedData, make_pipeline
from infini_jax.model.transformer import scan_segments


def held_out_data(data_cfg, segments: int, batch_size: int | None):
  """The run's data config turned into windows of ``segments`` segments of its corpus."""
  changes = dict(seq_len=segments * data_cfg.segment_len)
  if batch_size:
    changes["batch_size"] = batch_size
  if isinstance(data_cfg, ExportedData):   # exported in order, passkey examples left out
    return dataclasses.replace(data_cfg, **changes)
  changes["shuffle"] = False
  if data_cfg.task.endswith("_passkey"):
    changes.update(task=data_cfg.task[:-len("_passkey")], passkey_rate=0.0)
  return dataclasses.replace(data_cfg, **changes)


def bucket_sums(model, batch, bucket_len: int, write_weight=None) -> dict:
  """Sums ``{"nll", "z", "weight"}`` of the masked NLL per run of ``bucket_len`` positions
  ``[seq / bucket_len]``, for a model whose segments are ``bucket_len`` or a multiple of it (e.g.
  full attention, one segment as long as the input, counted in the other models' segments).

  ``batch``: inputs, targets, loss_mask ``[batch, seq]``; ``write_weight``: as in
  ``scan_segments``.
  """
  n = model.cfg.segment_len
  if n % bucket_len:
    raise ValueError(f"segment_len {n} is not a multiple of the bucket length {bucket_len}")

  def head(model, h, extras):
    def buckets(x):   # [b, n, ...] -> [n / bucket_len, b, bucket_len, ...]
      return x.reshape(x.shape[0], n // bucket_len, bucket_len, *x.shape[2:]).swapaxes(0, 1)
    w = model.unembedding()
    return jax.vmap(lambda h, t, m: loss.cross_entropy_sums(h, w, t, m))(
        *map(buckets, (h, *extras)))

  outputs, _ = scan_segments(model, batch["inputs"], None, head,
                             (batch["targets"], batch["loss_mask"]), write_weight)
  return jax.tree.map(lambda x: x.reshape(-1), outputs)   # [segments, per segment] -> buckets


def per_position_sums(runs, data_cfg, vocab_size: int, max_batches: int | None,
                      knockout: bool = False):
  """Summed NLL and token counts ``[seq]`` (each position of the window, summed over windows) of
  every run's model over the same held-out batches; ``by_segment`` and ``by_offset`` sum them.

  ``runs``: :class:`restore.Loaded`; each model reads the batches sharded over its own mesh.
  ``knockout``: the memory is never written (every token's write weight is 0, so it stays empty
  and its read is 0; ``memory="xl"`` hands nothing to the next segment, while
  ``local_context="two_segments"`` keeps its window of the previous segment: the compressive
  memory alone is knocked out).
  """
  fns = []
  for run in runs:
    graphdef, params = nnx.split(run.model)
    batch_sharding = sharding.named_sharding(
        run.mesh, (data_cfg.batch_size, 1), ("batch", "seq"), run.rules,
        "the evaluation batch (--batch_size, default the run's)")
    def sums(params, batch, graphdef=graphdef):
      never = jnp.zeros(batch["inputs"].shape, jnp.float32) if knockout else None
      return bucket_sums(nnx.merge(graphdef, params), batch, 1, never)

    loss = jax.jit(sums, out_shardings=sharding.replicated(run.mesh))
    fns.append((loss, params, batch_sharding))
  pipeline = make_pipeline(data_cfg, "validation", vocab_size)
  totals = [{"nll": 0.0, "weight": 0.0} for _ in runs]
  batches = 0
  while max_batches is None or batches < max_batches:
    try:
      local = pipeline.next_local()
    except StopIteration:
      break
    for run, total, (loss, params, batch_sharding) in zip(runs, totals, fns):
      batch = {k: jax.make_array_from_process_local_data(batch_sharding, v)
               for k, v in local.items()}
      with run.sharded():
        sums = jax.device_get(loss(params, batch))
      total["nll"] = total["nll"] + np.asarray(sums["nll"], np.float64)
      total["weight"] = total["weight"] + np.asarray(sums["weight"], np.float64)
    batches += 1
  if not batches:
    raise ValueError(f"the validation split of task {data_cfg.task!r} is empty")
  return totals, batches


def by_segment(sums: np.ndarray, segment_len: int) -> np.ndarray:
  """``[segments]``: per-position ``sums`` ``[seq]`` summed over each segment of ``segment_len``."""
  return sums.reshape(-1, segment_len).sum(1)


def by_offset(sums: np.ndarray, segment_len: int) -> np.ndarray:
  """``[segment_len]``: per-position ``sums`` ``[seq]`` summed over segments 2+ at each offset
  within the segment (segment 1, which has nothing before it, left out)."""
  return sums.reshape(-1, segment_len)[1:].sum(0)


def model_name(model, step_number: int, segment_len: int | None = None) -> str:
  """E.g. "infini/linear@1000", "xl@1000"; "none/seg2048@1000" for a model whose segments are
  not ``segment_len`` long (full attention beside a model of shorter segments);
  "infini/linear/local_only@1000" with ``empty_memory_gate="local_only"``,
  "infini/linear/query_gate@1000" with ``gate="query"``, "infini/linear/two_segments@1000" with
  ``local_context="two_segments"``; "/previous16" when ``previous_len=16`` (xl or two_segments);
  "/memory_gradient_stop" with ``memory_gradient="stop"``."""
  cfg = model.cfg
  memory = f"{cfg.memory}/{cfg.update_rule}" if cfg.memory == "infini" else cfg.memory
  if cfg.memory == "infini" and cfg.empty_memory_gate != "paper":
    memory += f"/{cfg.empty_memory_gate}"
  if cfg.memory == "infini" and cfg.gate != "head":
    memory += f"/{cfg.gate}_gate"
  if cfg.memory == "infini" and cfg.local_context != "segment":
    memory += f"/{cfg.local_context}"
  if cfg.previous_len is not None:
    memory += f"/previous{cfg.previous_len}"
  if cfg.memory_gradient != "full":
    memory += f"/memory_gradient_{cfg.memory_gradient}"
  if segment_len is not None and cfg.segment_len != segment_len:
    memory += f"/seg{cfg.segment_len}"
  return f"{memory}@{step_number}"

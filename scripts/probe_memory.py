"""How much of a memory read goes to the pass key as the memory fills: retrieval noise, measured.

For passkey prompts of several lengths, runs a checkpoint segment by segment and, in every layer
and head, splits the normaliser of the memory read (eq. 7) at the position that predicts the key's
last digit, σ(q)·z, into the part written by the key sentence's tokens and the rest:

    share = Σ_{t in key sentence} σ(q)·σ(k_t)  /  Σ_{t in earlier segments} σ(q)·σ(k_t)

With the linear rule (eq. 8) A_mem is exactly the mean of the stored values weighted this way, so
`share` is the key's weight in what the head reads; with the delta rule it is the key's share of
the normaliser. The key sits at the start of the filler (always in an earlier segment). Prints, per
length, the median share over the prompts for every head with its gate sigmoid(β); writes JSON.

  python scripts/probe_memory.py --checkpoint=runs/passkey_tiny --segments=16,64,256,1024

--filler=NAME (paper, plays_validation, glaciers, bread; data/fillers.py) or --filler_file=PATH
sets the haystack. --knockout also scores the answer on the same prompts with the memory and
with the memory never written (``decode.prefill(knockout=True)``), printed beside the shares
and written as ``answer_accuracy`` / ``answer_accuracy_knockout`` per length.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from infini_jax.commands import entry, runs  # noqa: E402
from infini_jax.evals import passkey as passkey_eval, restore, streaming  # noqa: E402
from infini_jax import paths  # noqa: E402
from infini_jax.errors import UserError  # noqa: E402
from infini_jax.data import fillers, passkey, text_files  # noqa: E402
from infini_jax.memory import sigma  # noqa: E402

USAGE = ("usage: scripts/probe_memory.py --checkpoint=RUN [--segments=16,64,256] [--samples=8] "
         "[--digits=N] [--filler=NAME | --filler_file=PATH] [--knockout] [--out=FILE.json] "
         "[gin flags]")


@nnx.jit
def _segment(model, memory, z, tokens, in_key):
  """One segment through every layer, accumulating each layer's σ(k) sums.

  memory: per-layer memories; z: per-layer (all, key) sums ``[batch, kv_heads, d]``;
  tokens ``[batch, n]``; in_key ``[batch, n]`` float (1 on key-sentence tokens).
  Returns (memory, z, per-layer σ(q) of the segment's last position ``[batch, heads, d]``).
  """
  cfg = model.cfg
  graphdef, state = nnx.split(model.blocks)
  x = model.embed(tokens, cfg.compute_dtype)
  memory, z, last_q = list(memory), list(z), []
  for layer in range(cfg.num_layers):
    block = nnx.merge(graphdef, jax.tree.map(lambda a, i=layer: a[i], state))
    q, k, _ = block.attn.project(block.attn_norm(x))
    sk = sigma(k.astype(jnp.float32))                                  # [b, n, kv, d]
    z_all, z_key = z[layer]
    z[layer] = (z_all + sk.sum(1), z_key + jnp.einsum("bnhd,bn->bhd", sk, in_key))
    last_q.append(sigma(q[:, -1].astype(jnp.float32)))
    x, memory[layer] = block(x, memory[layer])
  return tuple(memory), tuple(z), tuple(last_q)


def key_share(model, tokens: np.ndarray, key_span: list[tuple[int, int]]) -> np.ndarray:
  """``tokens [batch, length]``, each row's key-sentence span -> share ``[batch, layers, heads]``
  at the last position, over the segments before the last one."""
  cfg = model.cfg
  batch, length = tokens.shape
  in_key = np.zeros(tokens.shape, np.float32)
  for row, (start, end) in enumerate(key_span):
    in_key[row, start:end] = 1.0
  d = cfg.dim_per_head
  zeros = jnp.zeros((batch, cfg.num_kv_heads, d), jnp.float32)
  memory, z = model.init_memory(batch), ((zeros, zeros),) * cfg.num_layers
  starts = list(range(0, length, cfg.segment_len))
  for start in starts[:-1]:
    stop = start + cfg.segment_len
    memory, z, _ = _segment(model, memory, z, tokens[:, start:stop], in_key[:, start:stop])
  _, _, last_q = _segment(model, memory, z, tokens[:, starts[-1]:], in_key[:, starts[-1]:])
  group = cfg.num_heads // cfg.num_kv_heads
  shares = []
  for (z_all, z_key), sq in zip(z, last_q):          # z for the segments before the last only
    z_all, z_key = (np.repeat(np.asarray(a), group, axis=1) for a in (z_all, z_key))
    sq = np.asarray(sq)
    shares.append((sq * z_key).sum(-1) / np.maximum((sq * z_all).sum(-1), 1e-30))
  return np.stack(shares, axis=1)


def answer_accuracy(model, examples, knockout: bool) -> float:
  """Fraction of ``examples`` (passkey prompts of one length) whose answer is greedily right."""
  state, logits = streaming.stream_prefill(model, np.stack([ex["tokens"] for ex in examples]),
                                           knockout=knockout)
  answers = np.stack([ex["answer"] for ex in examples])
  predicted, _ = streaming.score_continuation(model, state, logits, answers, knockout)
  return float((predicted == answers).all(-1).mean())


def main(argv=None) -> dict:
  own, gin_argv = runs.split_own_flags(
      sys.argv[1:] if argv is None else argv,
      ("checkpoint", "segments", "samples", "digits", "filler", "filler_file", "out"), ("knockout",))
  if "checkpoint" not in own:
    raise SystemExit(USAGE)
  filler_text = None
  if "filler_file" in own:
    filler_text = text_files.read_text(own["filler_file"][-1], "--filler_file")
  elif "filler" in own:
    filler_text = fillers.filler_text(own["filler"][-1])
  loaded = runs.load(gin_argv, runs.last(own, "checkpoint"))
  model, cfg = loaded.model, loaded.model.cfg
  if cfg.memory != "infini":
    raise UserError(f"ModelConfig.memory is {cfg.memory!r}: there is no memory to probe")
  if cfg.local_context != "segment":
    raise UserError(f"the probe decodes, which ModelConfig.local_context={cfg.local_context!r} "
                    f"does not support; probe a model with local_context=\"segment\"")
  segments = runs.parse_list(runs.last(own, "segments", "16,64,256"), "--segments",
                                   runs.parse_count)
  samples = runs.parse_count(runs.last(own, "samples", "8"), "--samples")
  digits = int(runs.last(own, "digits", getattr(loaded.config.data, "passkey_digits", 5)))
  encode = restore.encoder(loaded.config.data)
  gates = np.asarray(jax.nn.sigmoid(model.blocks.attn.beta[...]))      # [layers, heads]
  result = {"checkpoint": loaded.checkpoint, "step": loaded.step, "gates": gates.tolist(),
            "update_rule": cfg.update_rule, "filler": runs.last(own, "filler"),
            "filler_file": runs.last(own, "filler_file"), "lengths": []}
  print(f"key share of the memory read (median over {samples} prompts, key at the start), "
        f"step {loaded.step}, {cfg.update_rule} rule; gates sigmoid(beta) in brackets")
  for n in segments:
    length = n * cfg.segment_len
    examples = [passkey_eval.prompt(encode, length, 0.0, digits, passkey.example_seed("eval", i),
                                    filler_text) for i in range(samples)]
    rows = [np.concatenate([ex["tokens"], ex["answer"][:-1]]) for ex in examples]
    spans = [ex["key_sentence"] for ex in examples]
    cell = {"segments": n, "tokens": length}
    with loaded.sharded():
      share = np.median(key_share(model, np.stack(rows), spans), axis=0)   # [layers, heads]
      if "knockout" in own:
        cell.update(answer_accuracy=answer_accuracy(model, examples, False),
                    answer_accuracy_knockout=answer_accuracy(model, examples, True))
    result["lengths"].append({**cell, "share": share.tolist()})
    cells = "  ".join(f"L{l}H{h} {share[l, h]:.2e} [{gates[l, h]:.2f}]"
                      for l in range(share.shape[0]) for h in range(share.shape[1]))
    answers = (f"  answer {cell['answer_accuracy']:.0%} / knock-out "
               f"{cell['answer_accuracy_knockout']:.0%}" if "knockout" in own else "")
    print(f"{n:5d} segments: {cells}{answers}")
  out = runs.last(own, "out") or os.path.join(runs.default_out(loaded.checkpoint),
                                                    "memory_probe.json")
  paths.write_text(out, json.dumps(result, indent=1))
  print(f"wrote {out}")
  return result


if __name__ == "__main__":
  entry.run(main)

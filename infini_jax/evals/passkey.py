"""Passkey retrieval at any length (the paper's task): prompts, accuracy per (length, depth)
cell, its table and heat map. The command is ``python -m infini_jax.eval_passkey``.

A prompt is streamed through ``decode.prefill`` in whole-segment chunks, so a 1M-token prompt
needs no more memory than a short one; its answer (the key's tokens) is then teacher-forced
through ``decode_step``. A prompt counts as correct when the greedy continuation equals the key's
tokens, i.e. when the argmax is right at every answer position.
"""

import time

import numpy as np

from infini_jax import plots
from infini_jax.data import passkey
from infini_jax.evals import streaming


def prompt(encode, length: int, depth: float, digits: int, seed: int, filler_text=None) -> dict:
  """The prompt of ``length`` input tokens as in training (``passkey.training_example``): prompt
  and answer together are ``length + 1`` tokens, so the answer's last token ends the ``length``
  tokens the model reads, and the answer is predicted in the question's segment."""
  answer = getattr(encode, "encode", encode)(" " + passkey.make_key(seed, digits))
  return passkey.make_example(encode, length + 1 - len(answer), depth, digits, seed, filler_text)


def in_answer_share(predicted: np.ndarray, answer: np.ndarray) -> float:
  """The share of ``predicted`` tokens ``[m]`` that occur anywhere in ``answer`` ``[m]``, in
  the right place or not. Beside the token accuracy it tells a model that reads which digits
  the key holds but not their order (high share, low accuracy) from one that reads nothing."""
  return float(np.isin(predicted, answer).mean())


def evaluate(model, encode, lengths, depths, samples: int, digits: int, filler_text=None,
             batch_size: int = 16, chunk_segments: int = 16, knockout: bool = False) -> dict:
  """Accuracy per (length, depth) cell, the cells' details and every prompt's outcome.

  ``depths``: (name, fraction) pairs. ``knockout``: the same prompts with the memory never written
  (it stays empty), so only the local path can answer. Returns a JSON-ready dict with
  ``accuracy`` as a ``[lengths][depths]`` list of fractions.
  """
  n = model.cfg.segment_len
  cells, examples = [], []
  accuracy = np.zeros((len(lengths), len(depths)))
  for li, length in enumerate(lengths):
    started = time.perf_counter()
    prompts = []   # (depth index, example) for every prompt of this length
    for di, (name, depth) in enumerate(depths):
      for i in range(samples):
        seed = passkey.example_seed("validation", (li * len(depths) + di) * samples + i)
        prompts.append((di, prompt(encode, length, depth, digits, seed, filler_text)))
    outcomes = [None] * len(prompts)
    # Batches of prompts of one length (answers of another vocabulary may differ in tokens).
    by_size = {}
    for i, (_, ex) in enumerate(prompts):
      by_size.setdefault(len(ex["tokens"]), []).append(i)
    batches = [same[b:b + batch_size] for same in by_size.values()
               for b in range(0, len(same), batch_size)]
    for batch in batches:
      group = [prompts[i][1] for i in batch]
      state, logits = streaming.stream_prefill(
          model, np.stack([ex["tokens"] for ex in group]), chunk_segments, knockout)
      answers = np.stack([ex["answer"] for ex in group])
      predicted, nll = streaming.score_continuation(model, state, logits, answers, knockout)
      for i, p, l, a in zip(batch, predicted, nll, answers):
        outcomes[i] = (p, l, a)
    seconds = time.perf_counter() - started
    for di, (name, depth) in enumerate(depths):
      rows = [(ex, out) for (d, ex), out in zip(prompts, outcomes) if d == di]
      correct = [bool((p == a).all()) for _, (p, _, a) in rows]
      accuracy[li, di] = np.mean(correct)
      key_segments = [ex["key_start"] // n for ex, _ in rows]
      cells.append(dict(
          length=length, segments=-(-length // n), depth=name, fraction=depth,
          accuracy=float(np.mean(correct)),
          token_accuracy=float(np.mean([(p == a).mean() for _, (p, _, a) in rows])),
          token_in_answer=float(np.mean([in_answer_share(p, a) for _, (p, _, a) in rows])),
          answer_nll=float(np.mean([l.sum() for _, (_, l, _) in rows])),
          key_segment=float(np.mean(key_segments)),
          key_in_last_segment=float(np.mean([s == (length - 1) // n for s in key_segments])),
          seconds_per_prompt=seconds / len(prompts)))
      examples += [dict(length=length, depth=name, key=ex["key"], key_segment=ex["key_start"] // n,
                        predicted=p.tolist(), answer=a.tolist(), correct=c)
                   for (ex, (p, _, a)), c in zip(rows, correct)]
    print(f"length {length}{' (knock-out)' if knockout else ''}: " + " ".join(f"{name} {accuracy[li, di]:.0%}"
                                          for di, (name, _) in enumerate(depths))
          + f" ({seconds:.1f} s)", flush=True)
  return dict(lengths=list(lengths), depths=[name for name, _ in depths],
              fractions=[d for _, d in depths], samples=samples, digits=digits, knockout=knockout,
              accuracy=accuracy.tolist(), cells=cells, examples=examples)


def _length_label(length: int) -> str:
  for unit, size in (("M", 1024 ** 2), ("K", 1024)):
    if length >= size and length % (size // 8) == 0:
      return f"{length / size:g}{unit}"
  return str(length)


def table(result: dict, segment_len: int, knockout: dict | None = None) -> str:
  """The accuracy table (percent), one row per length, one column per depth; with the
  ``knockout`` result of the same prompts, each cell reads "normal/knock-out"."""
  depths = result["depths"]
  width = 9 if knockout else 7
  lines = [f"{'length':>8} {'segments':>8} " + " ".join(f"{d:>{width}}" for d in depths)]
  rows = result["accuracy"] if knockout is None else zip(result["accuracy"], knockout["accuracy"])
  for length, row in zip(result["lengths"], rows):
    cells = ([f"{100 * a:>6.0f}%" for a in row] if knockout is None
             else [f"{f'{100 * a:.0f}/{100 * b:.0f}%':>9}" for a, b in zip(*row)])
    lines.append(f"{_length_label(length):>8} {-(-length // segment_len):>8} " + " ".join(cells))
  if knockout is not None:
    lines.append("cells: accuracy % / with the memory knocked out (never written)")
  return "\n".join(lines)


def heat_map(result: dict, segment_len: int, path: str, title: str) -> None:
  """A length x depth heat map of the accuracy, as in needle-in-a-haystack plots."""
  plots.heat_map(np.asarray(result["accuracy"]) * 100, path, title, xticks=result["depths"],
                 yticks=[f"{_length_label(l)} ({-(-l // segment_len)} seg)"
                         for l in result["lengths"]],
                 xlabel="depth of the key", ylabel="prompt length", colorbar="accuracy (%)",
                 cmap="RdYlGn", vmax=100, fmt=".0f", cell=(1.1, 0.5), fontsize=9)

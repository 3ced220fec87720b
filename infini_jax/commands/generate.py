"""Sampling from a run's checkpoint: `python -m infini_jax.generate` prints a continuation.

    python -m infini_jax.generate --checkpoint=runs/my_run --prompt="To be, or not to be"
    python -m infini_jax.generate --checkpoint=runs/my_run --prompt_file=prompt.txt \\
        --max_new_tokens=500 --temperature=0.8 --top_p=0.95 --seed=1
    cat prompt.txt | python -m infini_jax.generate --checkpoint=runs/my_run --prompt=-

Own flags (the rest are gin flags, as for the trainer; without ``--gin_file`` the run's
``config.gin`` next to ``--checkpoint`` is read, as the evaluations do):
  --checkpoint=DIR      a run directory, its ``checkpoints/`` or one step (default MODEL_DIR's);
                        the newest step that restores is used
  --prompt=TEXT         the text to continue; ``--prompt=-`` reads it from stdin
  --prompt_file=FILE    or read it from a UTF-8 file (the text is used exactly, newlines included)
  --max_new_tokens=N    tokens to generate (default 256); generation also ends at the
                        vocabulary's end-of-sequence token
  --temperature=T       0 (default) is greedy; above 0 samples from softmax(logits / T)
  --top_p=P             nucleus sampling mass in (0, 1] (default 1: off)
  --seed=S              the sampling seed (default 0); the same seed gives the same text

The continuation (not the prompt) is printed on stdout as its tokens are drawn, one decode step
at a time; nothing else goes to stdout, so it can be piped. The prompt is encoded with the run's
vocabulary (``DataConfig.vocabulary``) and read through ``decode.prefill`` in one call.
"""

import logging
import math
import sys

import jax

from infini_jax import decode
from infini_jax.commands import gin_flags, runs
from infini_jax.evals import restore
from infini_jax.data import text_files

FLAGS = ("checkpoint", "prompt", "prompt_file", "max_new_tokens", "temperature", "top_p", "seed")


def _number(own: dict, name: str, default, kind, check, requirement: str):
  """``--NAME`` as ``kind`` (default ``default``), or a ConfigError saying what it must be."""
  text = runs.last(own, name)
  if text is None:
    return default
  try:
    value = kind(text)
  except ValueError:
    value = None
  if value is None or not check(value):
    raise gin_flags.ConfigError(f"--{name}={text}: must be {requirement}")
  return value


def settings(own: dict) -> dict:
  """The sampling flags, checked: max_new_tokens, temperature, top_p, seed."""
  return dict(
      max_new_tokens=_number(own, "max_new_tokens", 256, int, lambda n: n >= 1,
                             "a whole number of at least 1"),
      temperature=_number(own, "temperature", 0.0, float, lambda t: math.isfinite(t) and t >= 0,
                          "a number >= 0 (0 is greedy)"),
      top_p=_number(own, "top_p", 1.0, float, lambda p: 0 < p <= 1,
                    "in (0, 1] (1 keeps every token; use --temperature=0 for greedy)"),
      seed=_number(own, "seed", 0, int, lambda s: True, "a whole number"))


def read_prompt(own: dict, stdin=None) -> str:
  """The prompt's text from ``--prompt=TEXT``, ``--prompt=-`` (stdin) or ``--prompt_file=FILE``."""
  if ("prompt" in own) == ("prompt_file" in own):
    raise gin_flags.ConfigError("give the text to continue as --prompt=TEXT, --prompt=- (stdin) or "
                          "--prompt_file=FILE (exactly one of them)")
  if "prompt_file" in own:
    text, source = text_files.read_text(own["prompt_file"][-1], "--prompt_file"), "--prompt_file"
  elif own["prompt"][-1] == "-":
    text, source = (stdin or sys.stdin).read(), "--prompt=- (stdin)"
  else:
    text, source = own["prompt"][-1], "--prompt"
  if not text:
    raise gin_flags.ConfigError(f"the prompt from {source} is empty; give the text to continue")
  return text


def stream_text(vocab, tokens):
  """Yields the text of ``tokens`` (an iterable of ids) piece by piece as they arrive.

  Each piece is what the text decoded so far adds to what was yielded before; a token that ends
  inside a character (a byte of a multi-byte UTF-8 character, decoded as U+FFFD) is held until
  the character is complete. The pieces joined are ``vocab.decode`` of all the tokens whenever
  decoding a prefix gives a prefix of the text, as for byte, SentencePiece and byte-level BPE
  vocabularies.
  """
  ids, shown = [], ""
  for token in tokens:
    ids.append(token)
    text = vocab.decode(ids)
    if len(text) > len(shown) and not text.endswith("\ufffd") and text.startswith(shown):
      yield text[len(shown):]
      shown = text
  text = vocab.decode(ids)
  if text.startswith(shown) and len(text) > len(shown):
    yield text[len(shown):]


def main(argv=None, stdin=None, stdout=None) -> list:
  """Runs the command; returns the generated token ids (its stop token left out)."""
  argv = sys.argv[1:] if argv is None else argv
  stdout = stdout or sys.stdout
  own, rest = runs.split_own_flags(argv, FLAGS)
  # Our own flags first: a bad one stops before the model is restored.
  sampling = settings(own)
  text = read_prompt(own, stdin)
  # stdout carries the text alone: log to stderr; gin_flags.setup_logging's basicConfig then does
  # nothing and it only keeps absl's routine warnings (a read-only restore) off the terminal.
  logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
  gin_flags.setup_logging()
  loaded = runs.load(rest, runs.last(own, "checkpoint"))
  vocab = restore.encoder(loaded.config.data)
  prompt = list(vocab.encode(text))
  if not prompt:
    raise gin_flags.ConfigError(f"the prompt {text!r} encodes to no tokens; give the text to continue")
  print(f"generating from {loaded.checkpoint} (step {loaded.step}), prompt of {len(prompt)} "
        f"tokens", file=sys.stderr, flush=True)
  generated = []

  def tokens():
    with loaded.sharded():
      for token, _ in decode.stream(
          loaded.model, [prompt], sampling["max_new_tokens"],
          temperature=sampling["temperature"], top_p=sampling["top_p"],
          stop_token=vocab.eos_id, rng=jax.random.key(sampling["seed"])):
        token = int(token[0])
        if token == vocab.eos_id:
          return
        generated.append(token)
        yield token

  for piece in stream_text(vocab, tokens()):
    stdout.write(piece)
    stdout.flush()
  stdout.write("\n")
  stdout.flush()
  return generated

"""The passkey retrieval task of the paper (sec. 4.2), in plain Python + numpy (no TensorFlow).

Prompt: an instruction, filler repeated, "The pass key is 9054. Remember it. 9054 is the pass
key.", more filler, then "What is the pass key? The pass key is"; the answer is " 9054".
`make_example` builds one prompt of an exact length in tokens (up to millions, in milliseconds:
the filler is encoded once and tiled). `training_example` turns a seed into an LM example whose
loss covers the answer only: the filler is predictable noise, and training on it would spend the
gradient on repeating it rather than on retrieval. Training may also vary the haystack (a passage
of natural text in place of the tiled filler) and the wording of the key sentence and question
(`KEY_SENTENCES`, `QUESTIONS`), so that what is learned is finding a key, not ignoring one
filler; evaluation keeps the paper's wording (the first of each).

Seeds: example i of the train split uses seed 2i, of any other split 2i+1, so train and
evaluation never share a passkey or a position.
"""

from __future__ import annotations

from typing import Callable, Union

import numpy as np

from infini_jax.errors import UserError

INSTRUCTION = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
               "memorize it. I will quiz you about the important information there.")
FILLER = (" The grass is green. The sky is blue. The sun is yellow. Here we go. There and back "
          "again.")
QUESTION = " What is the pass key? The pass key is"
# Key sentences as the parts between which the key (" 9054") goes; the first is the paper's.
KEY_SENTENCES = (
    (" The pass key is", ". Remember it.", " is the pass key."),
    (" The secret code is", ". Note it:", " is the code."),
    (" Remember the key", ". The key is", "."),
    (" Keep this number in mind:", ". Again, it is", "."),
)
# Questions, each followed by the answer " 9054"; the first is the paper's. Any sentence and
# question together are at most 3 characters longer than the paper's, so what fits it fits them.
QUESTIONS = (
    QUESTION,
    " What was the secret code? The code is",
    " Which number did you keep in mind? It is",
    " Recall the key from the text. The key is",
)
DEPTHS = {"start": 0.0, "middle": 0.5, "end": 1.0}

Encode = Callable[[str], "np.ndarray | list[int]"]


def _encoder(vocab_or_encode_fn) -> Callable[[str], np.ndarray]:
  encode = getattr(vocab_or_encode_fn, "encode", vocab_or_encode_fn)
  return lambda text: np.asarray(encode(text), dtype=np.int32).reshape(-1)


def example_seed(split: str, index: int) -> int:
  """The seed of example `index` of `split`: even for train, odd otherwise (disjoint streams)."""
  return 2 * int(index) + (0 if split == "train" else 1)


def make_key(seed: int, digits: int) -> str:
  """A `digits`-digit pass key (no leading zero) drawn from `seed`."""
  if digits < 1:
    raise UserError(f"digits {digits} must be >= 1")
  rng = np.random.default_rng([seed, 0])
  return str(int(rng.integers(10 ** (digits - 1), 10 ** digits)))


def make_example(vocab_or_encode_fn, length_tokens: int, depth: Union[float, str] = "middle",
                 digits: int = 5, seed: int = 0, filler_text: str | None = None,
                 key_sentence: tuple[str, ...] = KEY_SENTENCES[0],
                 question: str = QUESTION) -> dict:
  """One passkey prompt of exactly `length_tokens` tokens, ending right before the answer.

  vocab_or_encode_fn: a seqio.Vocabulary or any `str -> token ids` function.
  depth: where the key sits in the filler, a fraction in [0, 1] or "start"/"middle"/"end". The key
    sentence is placed on a filler boundary (within one filler repetition of the asked depth).
  filler_text: replaces the paper's filler sentences (e.g. the text of a book); it is tiled. A
    filler at least as long as the filler region is not tiled: its last tokens fill the region
    and the key goes at the asked depth exactly.
  key_sentence: the parts between which the key goes (one of `KEY_SENTENCES`); question: the text
    right before the answer (one of `QUESTIONS`).
  Returns dict(tokens=int32 [length_tokens], answer=int32 tokens of " <key>", key=str,
  key_start=index in `tokens` of the key's first token, key_sentence=(start, end) indices of the
  whole key sentence).
  """
  encode = _encoder(vocab_or_encode_fn)
  depth = DEPTHS.get(depth, depth) if isinstance(depth, str) else float(depth)
  if not isinstance(depth, float) or not 0.0 <= depth <= 1.0:
    raise UserError(f"depth {depth!r} must be a fraction in [0, 1] or one of {sorted(DEPTHS)}")
  key = make_key(seed, digits)
  key_toks = encode(" " + key)
  parts = [encode(part) for part in key_sentence]
  head = parts[0]
  key_sentence = [head] + [t for part in parts[1:] for t in (key_toks, part)]
  prefix, question = encode(INSTRUCTION), encode(question)
  fixed = len(prefix) + sum(map(len, key_sentence)) + len(question)
  n_filler = length_tokens - fixed
  if n_filler < 0:
    raise UserError(f"length_tokens {length_tokens} is too short for the passkey prompt, which "
                    f"needs at least {fixed} tokens with {digits} digits; ask for more tokens")
  unit = encode(FILLER if filler_text is None else filler_text)
  if len(unit) == 0:
    raise UserError("filler_text encodes to no tokens; give a non-empty filler text")
  # The filler region ends on a whole repetition of the unit so the question follows a complete
  # sentence; the key goes at a repetition boundary near the asked depth.
  offset = -n_filler % len(unit)
  region = np.resize(unit, n_filler + offset)[offset:]
  n_before = int(round(depth * n_filler))
  if len(unit) <= n_filler:
    n_after = min(int(round((n_filler - n_before) / len(unit))), n_filler // len(unit)) * len(unit)
    n_before = n_filler - n_after
  tokens = np.concatenate([prefix, region[:n_before], *key_sentence, region[n_before:], question])
  sentence_start = len(prefix) + n_before
  return dict(tokens=tokens.astype(np.int32), answer=key_toks, key=key,
              key_start=sentence_start + len(head),
              key_sentence=(sentence_start, sentence_start + sum(map(len, key_sentence))))


def natural_passage(text: str, encode: Callable[[str], np.ndarray], n_tokens: int,
                    rng: np.random.Generator) -> str:
  """A passage of `text` from a place drawn by `rng` that encodes to at least `n_tokens` tokens
  (fewer only if the rest of `text` is shorter; make_example then tiles it)."""
  start = int(rng.integers(0, max(1, len(text) - n_tokens)))
  chars = n_tokens
  while True:
    piece = text[start:start + chars]
    if start + chars >= len(text) or len(encode(piece)) >= n_tokens:
      return piece
    chars *= 2


def training_example(vocab_or_encode_fn, seed: int, segment_len: int,
                     segments: tuple[int, int] = (4, 8), digits: int = 5,
                     filler_text: str | None = None, answer_weight: float = 1.0,
                     dilution: float = 1.0, natural_text: str | None = None,
                     natural_rate: float = 0.0, vary_wording: bool = False) -> dict:
  """An LM example from `seed`: inputs, targets (inputs shifted by one), loss_mask on the answer,
  memory_weight.

  loss_mask is `answer_weight` on the answer tokens and 0 elsewhere.
  memory_weight (dilution): the key sentence's tokens weigh 1 in the memory writes, every other
  token r, drawn log-uniformly from [1, `dilution`]. With the linear rule the memory then holds
  what it would after every token but the key sentence came r times (exactly in the first layer,
  whose keys and values depend on the token alone), so the model learns to retrieve from a memory
  as full as an r times longer prompt's without paying for its segments.
  natural_rate: the fraction of examples whose haystack is a passage of `natural_text` (training
    text only: never a held-out haystack) drawn at random, instead of `filler_text` (None: the
    paper's filler) tiled. vary_wording: the key sentence and question drawn from
    `KEY_SENTENCES` and `QUESTIONS` (else the paper's). Both come from their own stream of the
    seed, so with natural_rate 0 and vary_wording False the example is exactly the paper's.
  Its length is k * segment_len tokens, k drawn from the inclusive range `segments`; the depth is
  uniform in [0, 1]. The caller pads to the sequence length (with loss_mask 0).
  """
  encode = _encoder(vocab_or_encode_fn)
  rng = np.random.default_rng([seed, 1])
  k = int(rng.integers(segments[0], segments[1] + 1))
  depth = float(rng.uniform())
  r = float(np.exp(rng.uniform() * np.log(dilution)))
  varied = np.random.default_rng([seed, 2])
  natural = varied.uniform() < natural_rate
  sentence, question = varied.integers(len(KEY_SENTENCES)), varied.integers(len(QUESTIONS))
  answer = encode(" " + make_key(seed, digits))
  # inputs = (prompt + answer)[:-1] has exactly k * segment_len tokens.
  length = k * segment_len + 1 - len(answer)
  if natural:
    if natural_text is None:
      raise ValueError("natural_rate > 0 needs natural_text")
    filler_text = natural_passage(natural_text, encode, length, varied)
  wording = (KEY_SENTENCES[sentence], QUESTIONS[question]) if vary_wording else ()
  ex = make_example(encode, length, depth, digits, seed, filler_text, *wording)
  seq = np.concatenate([ex["tokens"], ex["answer"]])
  mask = np.zeros(len(seq) - 1, np.float32)
  mask[-len(answer):] = answer_weight
  memory_weight = np.full(len(seq) - 1, r, np.float32)
  memory_weight[slice(*ex["key_sentence"])] = 1.0
  return dict(inputs=seq[:-1], targets=seq[1:], loss_mask=mask, memory_weight=memory_weight)

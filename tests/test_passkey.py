"""The passkey prompt generator: plain Python, deterministic, exact lengths, key at the depth."""

import functools
import hashlib
import subprocess
import sys
import time

import numpy as np
import pytest

from infini_jax.data import fillers, passkey


def encode(text):  # the byte vocabulary's ids, without importing seqio
  return np.frombuffer(text.encode(), np.uint8).astype(np.int32) + 3


def decode(ids):
  return bytes(int(i) - 3 for i in ids if i >= 3).decode()


def test_importing_passkey_needs_no_tensorflow():
  code = ("import sys, infini_jax.data.passkey as p; p.make_example(lambda s: [1] * len(s), 500);"
          "assert 'tensorflow' not in sys.modules and 'seqio' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("depth,expected", [("start", 0.0), ("middle", 0.5), ("end", 1.0),
                                            (0.25, 0.25)])
def test_key_appears_once_at_the_asked_depth(depth, expected):
  n = 4000
  ex = passkey.make_example(encode, n, depth=depth, digits=5, seed=7)
  tokens, key = ex["tokens"], ex["key"]
  assert len(tokens) == n and tokens.dtype == np.int32
  text = decode(tokens)
  assert len(key) == 5 and key.isdigit()
  # The key sentence once, and the key nowhere else.
  assert text.count(f"The pass key is {key}. Remember it. {key} is the pass key.") == 1
  assert text.count(key) == 2
  assert text.startswith(passkey.INSTRUCTION)
  assert text.endswith("What is the pass key? The pass key is")
  # The answer is " <key>" and these are exactly the tokens at key_start.
  assert decode(ex["answer"]) == " " + key
  s = ex["key_start"]
  np.testing.assert_array_equal(tokens[s:s + len(ex["answer"])], ex["answer"])
  # Within one filler repetition of the asked depth, measured over the filler region.
  sentence = encode(f" The pass key is {key}. Remember it. {key} is the pass key.")
  start, end = ex["key_sentence"]
  np.testing.assert_array_equal(tokens[start:end], sentence)
  n_filler = n - len(encode(passkey.INSTRUCTION)) - len(sentence) - len(encode(passkey.QUESTION))
  key_at = s - len(encode(passkey.INSTRUCTION)) - len(encode(" The pass key is"))
  assert abs(key_at - expected * n_filler) <= len(passkey.FILLER)


def test_deterministic_and_seed_dependent():
  a = passkey.make_example(encode, 2000, 0.3, 6, seed=11)
  b = passkey.make_example(encode, 2000, 0.3, 6, seed=11)
  c = passkey.make_example(encode, 2000, 0.3, 6, seed=12)
  np.testing.assert_array_equal(a["tokens"], b["tokens"])
  assert a["key"] == b["key"] and len(a["key"]) == 6
  assert a["key"] != c["key"]


def test_train_and_eval_seeds_are_disjoint():
  train = {passkey.example_seed("train", i) for i in range(10_000)}
  evals = {passkey.example_seed("validation", i) for i in range(10_000)}
  assert len(train) == len(evals) == 10_000 and not train & evals


def test_filler_text_replaces_the_default():
  ex = passkey.make_example(encode, 3000, "middle", seed=1, filler_text=" Call me Ishmael.")
  text = decode(ex["tokens"])
  assert "Call me Ishmael." in text and "grass" not in text
  assert len(ex["tokens"]) == 3000


def test_too_short_and_bad_depth_are_clear_errors():
  with pytest.raises(ValueError, match="too short.*at least"):
    passkey.make_example(encode, 100)
  with pytest.raises(ValueError, match="depth"):
    passkey.make_example(encode, 1000, depth="bottom")
  with pytest.raises(ValueError, match="depth"):
    passkey.make_example(encode, 1000, depth=1.5)


def test_one_million_tokens_is_fast():
  t = time.perf_counter()
  ex = passkey.make_example(encode, 1_000_000, "start", seed=3)
  assert len(ex["tokens"]) == 1_000_000
  assert time.perf_counter() - t < 2.0
  assert decode(ex["tokens"][ex["key_start"]:ex["key_start"] + 6]) == " " + ex["key"]


def test_training_example_trains_on_the_answer_only():
  for seed in range(20):
    ex = passkey.training_example(encode, seed, segment_len=128, segments=(2, 3), digits=4)
    n = len(ex["inputs"])
    assert n in (256, 384)
    np.testing.assert_array_equal(ex["inputs"][1:], ex["targets"][:-1])
    mask = ex["loss_mask"].astype(bool)
    assert mask.sum() == 5 and mask[-5:].all()
    key = passkey.make_key(seed, 4)
    assert decode(ex["targets"][mask]) == " " + key
    assert decode(ex["inputs"][:n - 4]).endswith("The pass key is")
    np.testing.assert_array_equal(ex["memory_weight"], 1.0)  # no dilution by default


def test_dilution_writes_all_but_the_key_sentence_r_times():
  sentence = " The pass key is {k}. Remember it. {k} is the pass key."
  factors = []
  for seed in range(40):
    ex = passkey.training_example(encode, seed, segment_len=128, segments=(2, 3), digits=2,
                                  dilution=16.0)
    key = passkey.make_key(seed, 2)
    weight = ex["memory_weight"]
    assert weight.shape == ex["inputs"].shape and weight.dtype == np.float32
    once = np.flatnonzero(weight == 1.0)
    assert decode(ex["inputs"][once]) == sentence.format(k=key)
    assert once[-1] - once[0] + 1 == len(once)  # one contiguous run: the sentence
    r = np.unique(weight[weight != 1.0])
    assert len(r) == 1 and 1.0 < r[0] <= 16.0
    factors.append(np.log(r[0]) / np.log(16.0))
  # log-uniform in [1, 16]: log r / log 16 is uniform in [0, 1].
  assert 0.3 < np.mean(factors) < 0.7 and min(factors) < 0.2 and max(factors) > 0.8


# sha1 of training_example's features for seeds 0, 1, 2, 7, 10 (segment_len 128, 2-4 segments,
# 3 digits, dilution 16), computed with passkey.py as it was before the haystacks and wordings
# could vary (commit 5b7aaf9).
PAPER_PROMPTS_SHA1 = "3bb24d09ed82250c308df50d7e92d21121457955"


def digest(**kwargs):
  h = hashlib.sha1()
  for seed in (0, 1, 2, 7, 10):
    ex = passkey.training_example(encode, seed, segment_len=128, segments=(2, 4), digits=3,
                                  dilution=16.0, **kwargs)
    for k in ("inputs", "targets", "loss_mask", "memory_weight"):
      h.update(np.ascontiguousarray(ex[k]).tobytes())
  return h.hexdigest()


def test_rate_0_and_the_paper_wording_give_the_old_prompts_exactly():
  assert digest() == PAPER_PROMPTS_SHA1
  assert digest(natural_text="Some other text. " * 100, natural_rate=0.0,
                vary_wording=False) == PAPER_PROMPTS_SHA1
  assert digest(vary_wording=True) != PAPER_PROMPTS_SHA1


def parts(ex, key):
  """(filler before, key sentence, filler after, question) of a training example's prompt."""
  once = np.flatnonzero(ex["memory_weight"] == 1.0)          # the key sentence (dilution > 1)
  n = len(ex["inputs"]) - len(encode(" " + key)) + 1          # the prompt, without the answer
  prompt = ex["inputs"][:n]
  before = decode(prompt[:once[0]])
  assert before.startswith(passkey.INSTRUCTION)
  question = next(q for q in passkey.QUESTIONS if decode(prompt).endswith(q))
  after = decode(prompt[once[-1] + 1:n - len(encode(question))])
  return before[len(passkey.INSTRUCTION):], decode(prompt[once]), after, question


def sentence_text(sentence, key):
  return f" {key}".join(sentence)


def test_natural_filler_is_training_text_and_the_key_only():
  text = fillers.training_text()
  held_out = fillers.filler_text("plays_validation")
  kinds = []
  for seed in range(12):
    ex = passkey.training_example(encode, seed, segment_len=64, segments=(4, 16), digits=1,
                                  dilution=4.0, natural_text=text, natural_rate=0.5,
                                  vary_wording=True)
    key = passkey.make_key(seed, 1)
    before, sentence, after, question = parts(ex, key)
    assert sentence in [sentence_text(s, key) for s in passkey.KEY_SENTENCES]
    assert question in passkey.QUESTIONS
    haystack = before + after
    natural = haystack not in passkey.FILLER * (len(haystack) // len(passkey.FILLER) + 2)
    kinds.append(natural)
    if natural:    # one passage of the training works, cut by the key sentence
      assert haystack in text and haystack[:60] not in held_out and haystack[-60:] not in held_out
    mask = ex["loss_mask"] > 0
    assert decode(ex["targets"][mask]) == " " + key and mask[-2:].all() and mask.sum() == 2
  assert 0 < sum(kinds) < len(kinds)      # both kinds of haystack at rate 0.5


def test_wording_varies_with_the_seed_and_is_fixed_by_it():
  text = fillers.training_text()
  seen = set()
  for seed in range(24):
    make = functools.partial(passkey.training_example, encode, seed, segment_len=64,
                             segments=(4, 6), digits=2, dilution=2.0, natural_text=text,
                             natural_rate=1.0, vary_wording=True)
    first, again = make(), make()
    for k in first:
      np.testing.assert_array_equal(first[k], again[k])
    _, sentence, _, question = parts(first, passkey.make_key(seed, 2))
    seen.add((sentence.replace(passkey.make_key(seed, 2), "K"), question))
  assert len({s for s, _ in seen}) == len(passkey.KEY_SENTENCES)
  assert len({q for _, q in seen}) == len(passkey.QUESTIONS)


def test_natural_rate_needs_the_text():
  with pytest.raises(ValueError, match="needs natural_text"):
    passkey.training_example(encode, 0, 64, (4, 4), 1, natural_rate=1.0)


@pytest.mark.parametrize("name", fillers.BUNDLED)
def test_bundled_fillers_are_held_out_prose_without_digits(name):
  """A bundled evaluation haystack has no digit (a key must be the only number in the prompt)
  and shares no sentence with the training text."""
  text = fillers.filler_text(name)
  training = fillers.training_text()
  assert len(text) > 2000 and not any(c.isdigit() for c in text)
  sentences = [s.strip() for s in text.replace("\n", " ").split(". ") if len(s.strip()) > 40]
  assert len(sentences) > 10 and not any(s in training for s in sentences)

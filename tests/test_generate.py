"""The generate command on a run trained for a few steps: streamed text, prompt sources, errors."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from infini_jax import decode
from infini_jax.commands import generate, runs, train
from infini_jax.evals import restore
from infini_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "tests", "configs", "smoke.gin")
PROMPT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A run of the smoke config (segments of 16 tokens) trained for 2 steps, with its config.gin."""
  directory = tmp_path_factory.mktemp("run")
  train.main([f"--gin_file={SMOKE}", f"--gin.MODEL_DIR='{directory}'", "--gin.TRAIN_STEPS=2"])
  return directory


def expected(run_dir, prompt: str, max_new_tokens: int, temperature=0.0, top_p=1.0, seed=0):
  """decode.generate's continuation of ``prompt`` (up to its end-of-sequence) and its text."""
  loaded = runs.load([], str(run_dir))
  vocab = restore.encoder(loaded.config.data)
  with loaded.sharded():
    out = decode.generate(loaded.model, [vocab.encode(prompt)], max_new_tokens,
                          temperature=temperature, top_p=top_p, stop_token=vocab.eos_id,
                          rng=jax.random.key(seed))
  ids = np.asarray(out.tokens[0, :int(out.lengths[0])]).tolist()
  ids = [i for i in ids if i != vocab.eos_id]
  return ids, vocab.decode(ids)


class Writes:
  """A stdout that keeps each write apart, to see that the text comes piece by piece."""

  def __init__(self):
    self.pieces = []

  def write(self, text):
    self.pieces.append(text)

  def flush(self):
    pass


@pytest.mark.parametrize("sampling", [[], ["--temperature=0.8", "--top_p=0.9", "--seed=3"]])
def test_prompt_flag_streams_what_generate_returns(run_dir, sampling):
  out = Writes()
  # The prompt is 85 bytes: 5 segments of 16 go into the memory, the rest into the cache.
  ids = generate.main([f"--checkpoint={run_dir}", f"--prompt={PROMPT}", "--max_new_tokens=40",
                       *sampling], stdout=out)
  kwargs = dict(temperature=0.8, top_p=0.9, seed=3) if sampling else {}
  want_ids, want_text = expected(run_dir, PROMPT, 40, **kwargs)
  assert ids == want_ids
  assert "".join(out.pieces) == want_text + "\n"
  if not sampling:   # 40 tokens, no end-of-sequence: written as they came, not all at the end
    assert len(ids) == 40 and len(out.pieces) > 5


def test_prompt_file_gives_the_same_text_as_the_flag(run_dir, tmp_path):
  path = tmp_path / "prompt.txt"
  path.write_text(PROMPT, encoding="utf-8")
  from_file, from_flag = Writes(), Writes()
  generate.main([f"--checkpoint={run_dir}", f"--prompt_file={path}", "--max_new_tokens=20"],
                stdout=from_file)
  generate.main([f"--checkpoint={run_dir}", f"--prompt={PROMPT}", "--max_new_tokens=20"],
                stdout=from_flag)
  assert "".join(from_file.pieces) == "".join(from_flag.pieces) == expected(
      run_dir, PROMPT, 20)[1] + "\n"


def test_command_reads_stdin_and_prints_only_the_continuation(run_dir):
  proc = subprocess.run(
      [sys.executable, "-m", "infini_jax.generate", f"--checkpoint={run_dir}", "--prompt=-",
       "--max_new_tokens=24", "--temperature=1.0", "--seed=5"],
      input=PROMPT, capture_output=True, text=True, cwd=ROOT, timeout=300,
      env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout == expected(run_dir, PROMPT, 24, temperature=1.0, seed=5)[1] + "\n"
  lines = proc.stderr.splitlines()   # where it came from, on stderr, and no logging noise
  assert len(lines) == 1 and lines[0].startswith("generating from") and "(step 2)" in lines[0]


def test_text_is_held_until_a_character_is_complete():
  class Bytes:   # the byte vocabulary's decoding: ids are bytes, a partial character is dropped
    def decode(self, ids):
      return bytes(ids).decode("utf-8", errors="ignore")

  word = "né€".encode()                        # 1 + 2 + 3 bytes
  pieces = list(generate.stream_text(Bytes(), list(word)))
  assert "".join(pieces) == "né€" and [p for p in pieces if p] == ["n", "é", "€"]


@pytest.mark.parametrize("flags, message", [
    (["--prompt=hi", "--temperature=-1"], "--temperature=-1: must be a number >= 0"),
    (["--prompt=hi", "--temperature=warm"], "--temperature=warm: must be a number >= 0"),
    (["--prompt=hi", "--top_p=0"], "--top_p=0: must be in (0, 1]"),
    (["--prompt=hi", "--top_p=1.5"], "--top_p=1.5: must be in (0, 1]"),
    (["--prompt=hi", "--max_new_tokens=0"], "--max_new_tokens=0: must be a whole number"),
    (["--prompt="], "the prompt from --prompt is empty"),
    ([], "give the text to continue as --prompt=TEXT"),
    (["--prompt=hi", "--prompt_file=x.txt"], "exactly one of them"),
    (["--prompt_file=/nonexistent/prompt.txt"], "--prompt_file=/nonexistent/prompt.txt: cannot read"),
])
def test_bad_flags_are_user_errors(run_dir, flags, message):
  with pytest.raises(UserError) as error:
    generate.main([f"--checkpoint={run_dir}", *flags])
  assert message in str(error.value)


def test_empty_stdin_and_missing_checkpoint_are_user_errors(run_dir, tmp_path):
  class Empty:
    def read(self):
      return ""

  with pytest.raises(UserError, match=r"the prompt from --prompt=- \(stdin\) is empty"):
    generate.main([f"--checkpoint={run_dir}", "--prompt=-"], stdin=Empty())
  with pytest.raises(UserError, match="no run config.gin found"):
    generate.main([f"--checkpoint={tmp_path / 'nothing'}", "--prompt=hi"])
  with pytest.raises(UserError, match="does not exist"):
    generate.main([f"--gin_file={SMOKE}", f"--checkpoint={tmp_path / 'nothing'}", "--prompt=hi"])

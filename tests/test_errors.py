"""Bad input, everywhere a user gives it: one ``error:`` line naming the problem and the fix.

A few cases run the real entry points as subprocesses (exit status 2, exactly one line on stderr,
so no traceback and no backend start-up noise; the traceback with ``--verbose``; a bug keeps its
traceback and status 1). The rest are checked where the input is checked, each message against
a pattern for its problem and its fix.
"""

import importlib
import inspect
import os
import re
import subprocess
import sys

import pytest

from infini_jax.commands import entry, gin_flags
from infini_jax.evals import restore
from infini_jax.errors import UserError, check_matches, one_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "tests", "configs", "smoke.gin")


def run(entry, *args, cwd=ROOT):
  """``python -m infini_jax.<entry> ARGS`` with the backends' settings left to the command."""
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL")}
  env["PYTHONPATH"] = ROOT
  return subprocess.run([sys.executable, "-m", f"infini_jax.{entry}", *map(str, args)], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=600)


def only_error_line(proc) -> str:
  """The one line a user error prints, after checking it is all that went to stderr."""
  assert proc.returncode == entry.USER_ERROR_STATUS, proc.stdout[-2000:] + proc.stderr[-3000:]
  lines = proc.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
  return lines[0]


# ---------------------------------------------------------------------------------------------
# Through the real entry points

def test_a_value_the_config_rejects_is_one_line_and_status_2(tmp_path):
  proc = run("train", f"--gin_file={SMOKE}", f"--gin.MODEL_DIR='{tmp_path}/run'",
             "--gin.ModelConfig.num_heads=3")
  assert only_error_line(proc) == ("error: ModelConfig: d_model=32 is not divisible by "
                                   "num_heads=3; change one of them or set head_dim explicitly")
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_verbose_adds_the_traceback(tmp_path):
  proc = run("train", f"--gin_file={SMOKE}", f"--gin.MODEL_DIR='{tmp_path}/run'", "--verbose",
             "--gin.ModelConfig.num_heads=3")
  assert proc.returncode == entry.USER_ERROR_STATUS
  assert proc.stderr.startswith("Traceback (most recent call last):")
  assert "infini_jax/model/config.py" in proc.stderr
  assert proc.stderr.splitlines()[-1].startswith("error: ModelConfig: d_model=32 is not divisible")


def test_a_bug_keeps_its_traceback_and_status_1():
  proc = subprocess.run(
      [sys.executable, "-c", "from infini_jax.commands import entry\n"
       "def main(argv): raise RuntimeError(f'a bug, argv={argv}')\nentry.run(main)",
       "--verbose", "x"],
      env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 1
  assert "Traceback" in proc.stderr and "RuntimeError: a bug, argv=['x']" in proc.stderr


def test_a_folder_that_is_not_a_checkpoint_names_it(tmp_path):
  (tmp_path / "notes.txt").write_text("not a checkpoint")
  line = only_error_line(run("eval_passkey", f"--gin_file={SMOKE}", f"--checkpoint={tmp_path}",
                             "--segments=4"))
  assert line == (f"error: no checkpoint steps in {tmp_path}; point --checkpoint=DIR (or "
                  f"MODEL_DIR) at a run directory, or its checkpoints/, holding a saved step that "
                  f"restores")


def test_a_corpus_file_that_is_not_utf8_is_named_without_tensorflow_noise(tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  (corpus / "a.txt").write_text("Enough text to be a document.\n" * 20)
  (corpus / "b.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
  proc = run("train", f"--gin_file={SMOKE}", f"--gin.MODEL_DIR='{tmp_path}/run'",
             "--gin.train.data=@DataConfig()", "--gin.DataConfig.task='local'",
             f"--gin.DataConfig.corpus_pattern='{corpus}'",
             f"--gin.DataConfig.data_dir='{tmp_path}/tfds'", "--gin.DataConfig.seq_len=64",
             "--gin.DataConfig.segment_len=16", "--gin.TRAIN_STEPS=1")
  assert only_error_line(proc) == (
      f"error: {corpus}/b.txt is not UTF-8 text (invalid byte at offset 3); convert it to UTF-8 "
      f"(e.g. `iconv -f latin1 -t utf-8 IN > OUT`) or leave it out")


# ---------------------------------------------------------------------------------------------
# The command layer

def test_command_run_exits_with_mains_status_and_strips_verbose(capsys):
  seen = []

  def main(argv):
    seen.append(argv)
    return 3

  with pytest.raises(SystemExit) as done:
    entry.run(main, ["--a=1", "--verbose", "b"])
  assert done.value.code == 3 and seen == [["--a=1", "b"]]

  def bad(argv):
    raise gin_flags.ConfigError("--x: wrong; use --y")

  with pytest.raises(SystemExit) as done:
    entry.run(bad, [])
  assert done.value.code == 2
  assert capsys.readouterr().err == "error: --x: wrong; use --y\n"


@pytest.mark.parametrize("command", ["train", "eval", "eval_ppl", "eval_passkey", "generate",
                                     "convert"])
def test_help_prints_the_commands_usage_and_runs_nothing(capsys, command):
  module = importlib.import_module(f"infini_jax.commands.{command}")
  ran = []
  main = lambda argv: ran.append(argv)
  main.__module__ = module.__name__
  with pytest.raises(SystemExit) as done:
    entry.run(main, ["--gin_file=x.gin", "--help"])
  assert done.value.code == 0 and ran == []
  out = capsys.readouterr().out
  assert f"python -m infini_jax.{command}" in out and out.strip() == inspect.getdoc(module)


def test_help_from_the_command_line():
  proc = subprocess.run([sys.executable, "-m", "infini_jax.eval_ppl", "--help"],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "--knockout" in proc.stdout and proc.stderr == ""


def test_gins_context_becomes_a_prefix_and_a_suffix():
  gin_flags.parse([SMOKE], [], [("--gin.ModelConfig.num_kv_heads=3", "ModelConfig.num_kv_heads = 3")])
  with pytest.raises(UserError) as error:
    gin_flags.bindings_of("train")
  assert "\n  In call to configurable 'ModelConfig'" in str(error.value)
  assert one_line(error.value) == (
      "ModelConfig: num_heads=4 is not divisible by num_kv_heads=3; set num_kv_heads to a "
      "divisor of num_heads (each key/value head serves the same number of query heads)")
  in_file = ValueError('boom\n  In file "a.gin", line 3\n    X = 1')
  assert one_line(in_file) == "boom (a.gin, line 3)"


# ---------------------------------------------------------------------------------------------
# Gin flags and files

def _parse(*flags, files=(SMOKE,)):
  bindings = [(f, f[len("--gin."):].replace("=", " = ", 1)) for f in flags]
  gin_flags.parse(list(files), [], bindings)
  return gin_flags.run_config()


def test_a_pattern_that_matches_no_parameter_lists_the_first_ones():
  names = [f"blocks_{i}/w" for i in range(20)]
  check_matches(r"_1\d/", names, "k", "of the model", "fix k")   # blocks_10/w: no error
  with pytest.raises(UserError) as error:
    check_matches("beta", names, "optimizer.gate_pattern", "of the model", "correct it")
  assert str(error.value) == (
      "optimizer.gate_pattern: 'beta' matches no parameter of the model; they are "
      + ", ".join(names[:16]) + ", ... (20 in all); correct it")
  with pytest.raises(UserError, match=r"they are a, b; fix$"):
    check_matches("c", ["a", "b"], "k", "loaded from x", "fix")


@pytest.mark.parametrize("flag, message", [
    ("--gin.train.stepz=3", r"--gin.train.stepz=3: Configurable 'train' doesn't have a parameter "
     r"named 'stepz'; did you mean steps\?$"),
    ("--gin.ModelConfg.d_model=3", r"No configurable matching 'ModelConfg'; did you mean "
     r"ModelConfig or MeshConfig\?$"),
    ("--gin.SEQLEN=3", r"no gin file defines the macro SEQLEN; did you mean SEQ_LEN\?$"),
    ("--gin.ModelConfig.memory='infinite'", r"ModelConfig.memory='infinite' is not one of "
     r"infini, none, xl$"),
    ("--gin.ModelConfig.update_rule='hebbian'", r"update_rule='hebbian' is not one of linear, "
     r"delta$"),
    ("--gin.ModelConfig.num_layers=0", r"ModelConfig.num_layers=0 must be positive$"),
    ("--gin.TRAIN_STEPS=-5", r"optimizer.total_steps=-5 must be an integer >= 1 \(gin: "
     r"OptimizerConfig.total_steps\)$"),
    ("--gin.BATCH_SIZE=0", r"SyntheticData: batch_size 0 must be positive$"),
    ("--gin.SEQ_LEN=500", r"^SyntheticData: seq_len 500 is not a multiple of segment_len 16; set "
     r"seq_len to a multiple of 16 \(e.g. 512\)$"),
    ("--gin.MeshConfig.data=3", r"^\d+ devices cannot be split into mesh data=3, fsdp=-1, "
     r"tensor=1: \d+ is not a multiple of 3; set MeshConfig sizes whose product divides \d+$"),
])
def test_bad_gin_flags(tmp_path, flag, message):
  with pytest.raises(UserError) as error:
    config = _parse(flag, f"--gin.MODEL_DIR='{tmp_path}'")
    from infini_jax.training import trainer as train
    train.train(config)
  assert re.search(message, one_line(error.value)), one_line(error.value)


def test_an_undefined_macro_in_a_file_names_the_binding(tmp_path):
  gin_file = tmp_path / "x.gin"
  gin_file.write_text(f"include '{SMOKE}'\nModelConfig.d_model = %D_MODLE\n")
  with pytest.raises(gin_flags.ConfigError, match=r"^ModelConfig.d_model = %D_MODLE: no gin file or "
                     r"flag defines the macro D_MODLE$"):
    _parse(files=[str(gin_file)])


@pytest.mark.parametrize("train_flag, message", [
    ("--gin.train.steps=-1", "train.steps=-1 must be >= 0; set --gin.train.steps"),
    ("--gin.train.log_every=0", "train.log_every=0 must be >= 1; set --gin.train.log_every"),
    # gin does no type checks; every entry point builds the config through run.RunConfig, which does
    ("--gin.train.steps='10'", "train.steps='10' is a str; expected int; fix the binding "
     "--gin.train.steps"),
    ("--gin.ModelConfig.gate_init='zero'", "ModelConfig.gate_init='zero' is a str; expected "
     "float"),
    ("--gin.SyntheticData.segment_len=8", "data segment_len 8 differs from the model's 16; bind "
     "both to the macro SEGMENT_LEN"),
])
def test_train_arguments(tmp_path, train_flag, message):
  from infini_jax.training import trainer as train
  with pytest.raises(UserError, match=message):
    train.train(_parse(train_flag, f"--gin.MODEL_DIR='{tmp_path}'"))


# ---------------------------------------------------------------------------------------------
# Corpus files, tokenizer files, checkpoint folders

def test_corpus_files(tmp_path):
  from infini_jax.data import text_files
  with pytest.raises(UserError, match=r"corpus folder '.*/nowhere' does not exist; set "
                     r"corpus_pattern to a folder or a glob"):
    text_files.list_files(str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match=r"no .txt, .jsonl or .txt.gz files found at '.*/empty'; "
                     r"set --corpus to a folder or a glob"):   # as scripts/train_tokenizer.py says
    text_files.list_files(str(tmp_path / "empty"), "--corpus")
  (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
  with pytest.raises(UserError, match=r"a.jsonl:2 is not valid JSON .*; write one JSON object "
                     r"per line"):
    list(text_files.read_documents(str(tmp_path / "a.jsonl"), str(tmp_path)))
  with pytest.raises(UserError, match=r"^--filler_file=.*/gone.txt: cannot read it \(No such "
                     r"file or directory\); check the path$"):
    text_files.read_text(str(tmp_path / "gone.txt"), "--filler_file")


def test_tokenizer_files(tmp_path):
  from infini_jax.data.vocab import get_vocabulary
  (tmp_path / "bad.model").write_bytes(b"not a sentencepiece model")
  (tmp_path / "tokenizer.json").write_text("{not json")
  for spec, message in [
      ("wordpiece:x", r"unknown vocabulary 'wordpiece:x'; use one of: 'byte', "
       r"'sentencepiece:/path/model.model', 'hf:/path/tokenizer.json'"),
      (f"sentencepiece:{tmp_path}/missing.model", r"SentencePiece model '.*/missing.model' not "
       r"found; train one with scripts/train_tokenizer.py"),
      (f"sentencepiece:{tmp_path}/bad.model", r"SentencePiece model '.*/bad.model' cannot be "
       r"read \(.*\); point 'sentencepiece:PATH' at a .model file written by sentencepiece"),
      (f"hf:{tmp_path}/missing", r"vocabulary 'hf:.*/missing': tokenizer file .* not found.*; "
       r"point it at a Hugging Face tokenizer.json or the folder holding it"),
      (f"hf:{tmp_path}", r"vocabulary 'hf:.*': .*line 1 column .*; point it at a Hugging Face "
       r"tokenizer.json or the folder holding it"),
  ]:
    with pytest.raises(UserError, match=message):
      get_vocabulary(spec)


def test_checkpoint_folders(tmp_path):
  import jax.numpy as jnp
  from infini_jax import checkpoint
  target = {"v": jnp.zeros((2,)), "w": jnp.zeros((2,))}
  with pytest.raises(UserError, match=r"checkpoint directory .*/nowhere does not exist; point "
                     r"--checkpoint=DIR \(or MODEL_DIR\) at a run directory or its checkpoints/"):
    restore.restore_params(str(tmp_path / "nowhere"), target)
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match=r"no checkpoint steps in .*/empty; point --checkpoint=DIR "
                     r"\(or MODEL_DIR\) at a run directory, or its checkpoints/, holding a saved "
                     r"step that restores$"):
    restore.restore_params(str(tmp_path / "empty"), target)
  with checkpoint.Checkpointer(tmp_path / "ckpt", save_every=1, async_save=False) as ckpt:
    ckpt.save(1, {"params": {"v": jnp.ones((2,))}}, data_position=0, force=True)
  with pytest.raises(UserError, match=r"lacks parameters \['w'\]; is the gin config the one "
                     r"this run was trained with"):
    restore.restore_params(str(tmp_path / "ckpt"), target)


# ---------------------------------------------------------------------------------------------
# Evaluation flags (checked before a model is restored: no checkpoint is needed here)

@pytest.mark.parametrize("entry, flags, message", [
    ("eval_passkey", ["--segments=abc"], r"^--segments: 'abc' is not a count like 2048, 32K or 1M "
     r"\(at least 1\)$"),
    ("eval_passkey", ["--lengths=0"], r"^--lengths: '0' is not a count"),
    ("eval_passkey", ["--segments=4", "--lengths=1K"], r"^give prompt lengths either as "
     r"--lengths \(tokens\) or --segments$"),
    ("eval_passkey", ["--depths=deep"], r"^--depths: depth 'deep' is not one of start, middle, "
     r"end or a fraction in \[0, 1\]$"),
    ("eval_passkey", ["--segments="], r"^--segments: expected a comma-separated list$"),
    ("eval_passkey", ["--checkpoint"], r"^--checkpoint: expected --checkpoint=VALUE$"),
    ("eval_passkey", ["--filler_file=/nonexistent/f.txt"], r"^--filler_file=/nonexistent/f.txt: "
     r"cannot read it"),
    ("eval_ppl", ["--batches=0"], r"^--batches: '0' is not a count"),
    ("eval_ppl", ["--segments=x"], r"^--segments: 'x' is not a count"),
    ("eval_passkey", ["--sample=3"], r"^unknown arguments \['--sample=3'\]"),
    ("eval_passkey", [], r"^no --gin_file given and no run config.gin found; pass the run's gin "
     r"files .* or --checkpoint=RUN_DIR"),
])
def test_evaluation_flags(entry, flags, message):
  import importlib
  with pytest.raises(UserError) as error:
    importlib.import_module(f"infini_jax.{entry}").main(flags)
  assert re.search(message, one_line(error.value)), one_line(error.value)

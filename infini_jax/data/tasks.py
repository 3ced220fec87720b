"""seqio tasks and mixtures: corpora and the passkey task, turned into fixed-length LM examples.

Every task yields "inputs" and "targets" (int32 [seq_len], targets[t] = inputs[t + 1]),
"loss_mask" (float32, 0 on padding) and "memory_weight" (float32, each token's weight in the
memory writes of training: 1 for text; passkey.training_example for passkey examples).
Corpus preprocessing: text -> tokens -> EOS appended -> documents shorter than min_doc_tokens
dropped -> cut into examples. Unpacked, a document of n tokens gives ceil((n - 1) / seq_len)
examples, windows of seq_len + 1 tokens overlapping by one so every token after the first is
predicted once; the last window is padded. Packed, the documents form one stream cut the same way
(the tail of a finite split shorter than an example is dropped).

Names: what the config does not fix (vocabulary, packing, ...) is baked into a task, so a config
that differs from `DataConfig()`'s defaults registers a variant "<task>.<hash>"; `task_name(cfg)`
returns the name to read. The defaults are registered on import under the bare names
("shakespeare", "pg19", "c4", "passkey", and "<corpus>_passkey" mixtures at 5% passkey).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools

from infini_jax.data import quiet_tf  # noqa: F401, I001  (first: a quiet TensorFlow import)
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from infini_jax.data import corpus, fillers, local_text, passkey, text_files
from infini_jax.data.config import DataConfig
from infini_jax.data.vocab import get_vocabulary
from infini_jax.errors import UserError

FEATURES = ("inputs", "targets", "loss_mask", "memory_weight")
SHUFFLE_BUFFER = 1000  # examples
DOC_SHUFFLE_BUFFER = 1024  # documents
PASSKEY_VALIDATION_EXAMPLES = 256
DEFAULT_PASSKEY_RATE = 0.05


# ---------------------------------------------------------------------------------------------
# Sources


class _SplitShardedSource(seqio.DataSource):
  """A source that shards a split itself (any number of hosts), not by files."""

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split):
    return [split]


class _BuilderSource(_SplitShardedSource):
  """Documents of a TFDS builder made on first use; a host's shard is an even split of a split.

  ``fingerprint`` names the documents (for local files: their paths, sizes and times), so that
  examples prepared from other documents are never read as these (prepare.py).
  """

  def __init__(self, make_builder, fingerprint: str, splits=("train", "validation")):
    self._make_builder = make_builder
    self._builder = None
    self.fingerprint = fingerprint
    super().__init__(splits=splits, caching_permitted=False)

  def num_input_examples(self, split):
    return None

  def ready(self):
    """Builds the TFDS dataset now if it is not on disk (before processes that share it start)."""
    if self._builder is None:
      self._builder = self._make_builder()
    return self._builder

  def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, *,
                  sequence_length=None, use_cached=False, num_epochs=1):
    del sequence_length, use_cached, num_epochs
    self.ready()
    if shard_info and shard_info.num_shards > 1:
      split = tfds.even_splits(split, shard_info.num_shards)[shard_info.index]
    ds = self._builder.as_dataset(split=split, shuffle_files=shuffle,
                                  read_config=tfds.ReadConfig(shuffle_seed=seed))
    return ds.shuffle(DOC_SHUFFLE_BUFFER, seed=seed) if shuffle else ds


class PasskeySource(_SplitShardedSource):
  """Passkey examples made from their seeds: train is endless, validation a fixed set."""

  def __init__(self, make_example, num_validation=PASSKEY_VALIDATION_EXAMPLES):
    self._make_example = make_example
    super().__init__(splits=("train", "validation"), caching_permitted=False,
                     num_input_examples={"validation": num_validation})

  def num_input_examples(self, split):
    return self._num_input_examples.get(split)  # train: endless

  def example(self, split: str, index: int) -> dict:
    """Example ``index`` of ``split`` (its own length, unpadded), from its seed alone."""
    return self._make_example(passkey.example_seed(split, int(index)))

  def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, *,
                  sequence_length=None, use_cached=False, num_epochs=1):
    del shuffle, seed, sequence_length, use_cached, num_epochs  # examples are random already
    index, count = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
    stop = 2**62 if split == "train" else self._num_input_examples["validation"]

    def make(i):
      ex = self.example(split, i)
      return tuple(ex[k] for k in FEATURES)

    def to_dict(i):
      values = tf.numpy_function(make, [i], [tf.int32, tf.int32, tf.float32, tf.float32],
                                 stateful=False)
      return {k: tf.ensure_shape(v, [None]) for k, v in zip(FEATURES, values)}

    return tf.data.Dataset.range(index, stop, count).map(to_dict)


# ---------------------------------------------------------------------------------------------
# Preprocessors


def _text_to_targets(dataset, text_key):
  return dataset.map(lambda ex: {"targets": ex[text_key]})


def _append_eos(dataset, output_features):
  eos = output_features["targets"].vocabulary.eos_id
  return dataset.map(lambda ex: {"targets": tf.concat([ex["targets"], [eos]], 0)})


def _drop_short(dataset, min_tokens):
  # The EOS appended to every document does not count.
  return dataset.filter(lambda ex: tf.size(ex["targets"]) - 1 >= min_tokens)


def _windows(tokens, n_real, length):
  """Windows of length + 1 tokens, overlapping by one: inputs/targets/loss_mask/memory_weight
  [k, length]."""
  k = tf.shape(tokens)[0] // length if n_real is None else (n_real - 1 + length - 1) // length
  k = tf.maximum(k, 0)
  need = k * length + 1
  padded = tf.pad(tokens, [[0, tf.maximum(need - tf.shape(tokens)[0], 0)]])[:need]
  inputs = tf.reshape(padded[:-1], [k, length])
  targets = tf.reshape(padded[1:], [k, length])
  real = tf.shape(tokens)[0] if n_real is None else n_real
  mask = tf.cast(tf.range(1, need) < real, tf.float32)
  return {"inputs": inputs, "targets": targets, "loss_mask": tf.reshape(mask, [k, length]),
          "memory_weight": tf.ones([k, length], tf.float32)}


def _cut_into_examples(dataset, sequence_length, pack):
  length = sequence_length["targets"]
  if sequence_length.get("inputs", length) != length:
    raise ValueError(f"inputs and targets lengths differ: {sequence_length}")
  if not pack:
    docs = dataset.map(lambda ex: _windows(ex["targets"], tf.size(ex["targets"]), length))
    return docs.unbatch()

  def step(rest, ex):
    stream = tf.concat([rest, ex["targets"]], 0)
    full = (tf.size(stream) - 1) // length * length  # tokens that start a full window
    return stream[full:], _windows(stream[:full + 1], None, length)

  return dataset.scan(tf.zeros([0], tf.int32), step).unbatch()


def _pad(dataset, sequence_length):
  def pad(ex):
    return {k: tf.pad(v, [[0, sequence_length[k] - tf.size(v)]]) for k, v in ex.items()}
  return dataset.map(pad)


# ---------------------------------------------------------------------------------------------
# Registration


def _output_features(vocabulary: str):
  vocab = get_vocabulary(vocabulary)
  weights = seqio.PassThroughVocabulary(1)
  return {
      "inputs": seqio.Feature(vocab, add_eos=False),
      "targets": seqio.Feature(vocab, add_eos=False),
      "loss_mask": seqio.Feature(weights, add_eos=False, dtype=tf.float32),
      "memory_weight": seqio.Feature(weights, add_eos=False, dtype=tf.float32),
  }


_DEFAULT = DataConfig()
_CORPUS_FIELDS = ("vocabulary", "pack", "min_doc_tokens", "data_dir")
_PASSKEY_FIELDS = ("vocabulary", "segment_len", "passkey_segments", "passkey_digits",
                   "passkey_filler", "passkey_loss_weight", "passkey_dilution",
                   "passkey_natural_filler_rate", "passkey_vary_wording")


def _variant(base: str, cfg: DataConfig, fields, extra=()) -> str:
  """`base` for the default settings of `fields`, else base + "." + a hash of the settings."""
  ours = tuple(getattr(cfg, f) for f in fields) + tuple(extra)
  default = tuple(getattr(_DEFAULT, f) for f in fields)
  if ours == default:
    return base
  return f"{base}.{hashlib.sha1(repr(ours).encode()).hexdigest()[:10]}"


def _corpus_source(name: str, cfg: DataConfig) -> seqio.DataSource:
  spec = corpus.CORPORA[name]
  if spec.tfds_name:
    return _BuilderSource(lambda: tfds.builder(spec.tfds_name, data_dir=cfg.data_dir),
                          f"tfds:{spec.tfds_name}")
  # Listing the files now makes a missing or empty corpus fail at once, not at the first batch.
  config = local_text.make_config(corpus.pattern_of(name, cfg.corpus_pattern), name,
                                  spec.validation_files, spec.validation_fraction, spec.text_key,
                                  spec.suffixes, spec.min_bytes, spec.exclude_dirs)
  return _BuilderSource(lambda: local_text.prepared_builder(config, cfg.data_dir),
                        f"local_text:{config.name}")


def _register_corpus_task(name: str, cfg: DataConfig) -> str:
  local_pattern = (cfg.corpus_pattern,) if name == "local" else ()
  task = _variant(name, cfg, _CORPUS_FIELDS, local_pattern)
  if task not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(
        task,
        source=_corpus_source(name, cfg),
        preprocessors=[
            functools.partial(_text_to_targets, text_key=corpus.CORPORA[name].text_key),
            functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
            _append_eos,
            functools.partial(_drop_short, min_tokens=cfg.min_doc_tokens),
            functools.partial(_cut_into_examples, pack=cfg.pack),
        ],
        output_features=_output_features(cfg.vocabulary),
        shuffle_buffer_size=SHUFFLE_BUFFER)
  return task


def _register_passkey_task(cfg: DataConfig) -> str:
  cfg.check_passkey_fits()
  task = _variant("passkey", cfg, _PASSKEY_FIELDS)
  if task not in seqio.TaskRegistry.names():
    filler = None
    if cfg.passkey_filler:
      filler = text_files.read_text(cfg.passkey_filler, "DataConfig.passkey_filler")
    vocab = get_vocabulary(cfg.vocabulary)
    shortest = cfg.passkey_segments[0] * cfg.segment_len
    # The shortest prompt with the longest wording it may draw (a paraphrase may be longer).
    wordings = (itertools.product(passkey.KEY_SENTENCES, passkey.QUESTIONS)
                if cfg.passkey_vary_wording else [(passkey.KEY_SENTENCES[0], passkey.QUESTION)])
    answer = len(vocab.encode(" " + passkey.make_key(0, cfg.passkey_digits)))
    try:
      for sentence, question in wordings:
        passkey.make_example(vocab, shortest + 1 - answer, 0.5, cfg.passkey_digits, 0, filler,
                             sentence, question)
    except ValueError as e:
      raise UserError(
          f"passkey examples of {cfg.passkey_segments[0]} segments ({shortest} tokens) are "
          f"shorter than the passkey prompt ({e}); raise passkey_segments[0] or "
          "segment_len") from None
    natural = fillers.training_text() if cfg.passkey_natural_filler_rate else None
    make = functools.partial(
        passkey.training_example, vocab, segment_len=cfg.segment_len,
        segments=cfg.passkey_segments, digits=cfg.passkey_digits, filler_text=filler,
        answer_weight=cfg.passkey_loss_weight, dilution=cfg.passkey_dilution,
        natural_text=natural, natural_rate=cfg.passkey_natural_filler_rate,
        vary_wording=cfg.passkey_vary_wording)
    seqio.TaskRegistry.add(
        task,
        source=PasskeySource(make),
        preprocessors=[_pad],
        output_features=_output_features(cfg.vocabulary),
        shuffle_buffer_size=SHUFFLE_BUFFER)
  return task


def task_name(cfg: DataConfig) -> str:
  """Registers (once) the task or mixture that `cfg` asks for; returns its seqio name."""
  name = cfg.task
  mixture_of = name[:-len("_passkey")] if name.endswith("_passkey") else None
  if cfg.passkey_rate and mixture_of not in corpus.CORPORA:
    fix = (f"set task='{name}_passkey' or passkey_rate=0" if name in corpus.CORPORA
           else "set DataConfig.passkey_rate=0")
    raise UserError(f"passkey_rate {cfg.passkey_rate} applies to '<corpus>_passkey' mixtures, "
                    f"not task {name!r}; {fix}")
  if name in corpus.CORPORA:
    return _register_corpus_task(name, cfg)
  if name == "passkey":
    return _register_passkey_task(cfg)
  if mixture_of in corpus.CORPORA:
    if not cfg.passkey_rate:
      raise UserError(f"task {name!r} mixes in passkey examples at passkey_rate, which is 0; "
                      f"set passkey_rate in (0, 1), e.g. {DEFAULT_PASSKEY_RATE}")
    parts = (_register_corpus_task(mixture_of, cfg), _register_passkey_task(cfg))
    mixture = name
    if parts != (mixture_of, "passkey") or cfg.passkey_rate != DEFAULT_PASSKEY_RATE:
      mixture += "." + hashlib.sha1(repr(parts + (cfg.passkey_rate,)).encode()).hexdigest()[:10]
    if mixture not in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.add(mixture, [(parts[0], 1.0 - cfg.passkey_rate),
                                          (parts[1], cfg.passkey_rate)])
    return mixture
  if name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names():
    return name
  raise UserError(f"unknown task {name!r}; use one of {sorted(corpus.CORPORA)}, 'passkey', "
                  "'<corpus>_passkey', or register a seqio task first")


def _register_defaults():
  # Only the bundled corpus lists files now; PG19 and C4 are touched at their first batch.
  for name in ("shakespeare", "pg19", "c4", "passkey"):
    task_name(dataclasses.replace(_DEFAULT, task=name))
  task_name(dataclasses.replace(_DEFAULT, task="shakespeare_passkey",
                                passkey_rate=DEFAULT_PASSKEY_RATE))


_register_defaults()

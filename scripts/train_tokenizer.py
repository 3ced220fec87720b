"""Trains a SentencePiece model on local text, with the ids the pipeline expects.

    python scripts/train_tokenizer.py --corpus '/data/books/*.txt' --vocab_size 32000 \
        --out /data/spm/books          # writes /data/spm/books.model and .vocab

Then use `vocabulary="sentencepiece:/data/spm/books.model"`. Ids: pad 0, eos 1, unk 2, no bos
(seqio's convention, which the pipeline's padding and EOS rely on). Needs no TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Iterator

import sentencepiece as spm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from infini_jax.commands import entry  # noqa: E402
from infini_jax.data import text_files  # noqa: E402  (pure Python, no TensorFlow)


def _chunks(pattern: str, text_key: str, max_chars: int, size: int = 2000) -> Iterator[str]:
  """Pieces of about `size` characters cut at line ends, newlines kept, so they get tokens."""
  budget = max_chars
  for _, text in text_files.iter_documents(text_files.list_files(pattern, "--corpus"), text_key):
    piece = ""
    for line in text.splitlines(keepends=True):
      piece += line
      if len(piece) >= size:
        yield piece[:4 * size]  # SentencePiece skips over-long "sentences"
        budget -= len(piece)
        piece = ""
      if budget <= 0:
        return
    if piece.strip():
      yield piece
      budget -= len(piece)


def train_tokenizer(corpus: str, out: str, vocab_size: int = 32000, model_type: str = "unigram",
                    text_key: str = "text", max_chars: int = 200_000_000) -> str:
  """Trains on the documents at `corpus` (folder or glob); returns the path of the .model file."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  spm.SentencePieceTrainer.train(
      sentence_iterator=_chunks(corpus, text_key, max_chars),
      model_prefix=out,
      vocab_size=vocab_size,
      model_type=model_type,
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      character_coverage=1.0,
      # Keep the text as it is (newlines, runs of spaces): decode(encode(text)) == text.
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      allow_whitespace_only_pieces=True,
      max_sentence_length=16384,
      byte_fallback=True,  # unseen characters become bytes, never unk
      hard_vocab_limit=False,  # small corpora: a smaller vocabulary rather than an error
      minloglevel=2)
  return out + ".model"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--corpus", required=True, help="folder or glob of .txt/.jsonl/.txt.gz files")
  p.add_argument("--out", required=True, help="output prefix: writes PREFIX.model, PREFIX.vocab")
  p.add_argument("--vocab_size", type=int, default=32000)
  p.add_argument("--model_type", default="unigram", choices=["unigram", "bpe", "char", "word"])
  p.add_argument("--text_key", default="text", help="JSON field of the text in .jsonl files")
  p.add_argument("--max_chars", type=int, default=200_000_000, help="characters to train on")
  args = p.parse_args(argv)
  print(train_tokenizer(args.corpus, args.out, args.vocab_size, args.model_type, args.text_key,
                        args.max_chars))


if __name__ == "__main__":
  entry.run(main)

"""``python -m infini_jax.eval_ppl``: held-out perplexity by position in the document (see ``infini_jax.commands.eval_ppl``)."""

from infini_jax.commands import entry, eval_ppl

main = eval_ppl.main

if __name__ == "__main__":
  entry.run(main)

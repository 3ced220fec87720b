"""``python -m infini_jax.sweep``: a grid or random sweep of gin bindings, ending in a table of
results (see ``infini_jax.commands.sweep``)."""

from infini_jax.commands import entry
from infini_jax.commands.sweep import main as sweep

main = sweep.main

if __name__ == "__main__":
  entry.run(main, parses_help=True)

"""``python -m infini_jax.eval``: the held-out loss of a run's newest checkpoint (see ``infini_jax.commands.eval``)."""

from infini_jax.commands import entry, eval

main = eval.main

if __name__ == "__main__":
  entry.run(main)

"""``python -m infini_jax.train``: pretraining and continual pretraining (see ``infini_jax.commands.train``)."""

from infini_jax.commands import entry, train

main = train.main

if __name__ == "__main__":
  entry.run(main)

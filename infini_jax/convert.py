"""``python -m infini_jax.convert``: Hugging Face weights to and from our checkpoints (see ``infini_jax.commands.convert``)."""

from infini_jax.commands import entry, convert

main = convert.main

if __name__ == "__main__":
  entry.run(main)

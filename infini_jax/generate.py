"""``python -m infini_jax.generate``: sample from a run's checkpoint, streaming the text (see
``infini_jax.commands.generate``)."""

from infini_jax.commands import entry, generate

main = generate.main

if __name__ == "__main__":
  entry.run(main)

"""``python -m infini_jax.eval_passkey``: passkey retrieval at any length (see ``infini_jax.commands.eval_passkey``)."""

from infini_jax.commands import entry, eval_passkey

main = eval_passkey.main

if __name__ == "__main__":
  entry.run(main)

"""Evaluations as functions: held-out loss, passkey retrieval, perplexity by position, and the
restored model and streamed inputs they share. Their commands are in ``infini_jax.commands``."""

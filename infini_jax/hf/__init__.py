"""Hugging Face interoperability: Llama-family weights (``llama.py``) and ``tokenizer.json`` (``tokenizer.py``).

``tokenizer.py`` imports seqio and TensorFlow; import it directly, not from here, so that weight
conversion runs where neither is installed.
"""

from infini_jax.hf.llama import (MissingTensorError, UnexpectedTensorError, config_from_hf,
                                 export_hf, gin_bindings, hf_config, load_hf_params,
                                 read_hf_config)

__all__ = ["MissingTensorError", "UnexpectedTensorError", "config_from_hf", "export_hf",
           "gin_bindings", "hf_config", "load_hf_params", "read_hf_config"]

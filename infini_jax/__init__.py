"""infini_jax: Infini-attention Transformers in JAX/Flax (arXiv 2404.07143).

Importing the package stays light: the data pipeline (TensorFlow, seqio) is imported only by the
modules that read data, so the model, memory and train step run where TensorFlow is absent.
"""

__version__ = "0.1.0"

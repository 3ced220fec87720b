"""The Infini-Transformer (Flax NNX)."""

from infini_jax.model.config import ModelConfig
from infini_jax.model.transformer import (InfiniTransformer, merge_segments, scan_segments,
                                          segment, stack_layers, unstack_layers)

__all__ = ["ModelConfig", "InfiniTransformer", "scan_segments", "segment", "merge_segments",
           "stack_layers", "unstack_layers"]

"""Model FLOPs per token and chip peaks, for MFU figures that compare with MaxText's.

Counted as MaxText does today: every matmul (Q/K/V/O projections, gated MLP, unembedding) plus local
attention with its causal half only, times 3 for forward + backward. The compressive memory's
matmuls (sigma(Q) M, its normaliser, sigma(K)^T V, and the delta rule's extra read) are ours to
add: figures are given with and without them.
"""

import jax

from infini_jax.model.config import ModelConfig

# Dense bf16 peaks in FLOP/s per chip (STACK.md). Keys are matched against device_kind.
PEAK_FLOPS = {
    "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H100": 989e12,
    "H200": 989e12, "TPU v5p": 459e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12,
    "TPU v6": 918e12,
}


def forward_flops_per_token(cfg: ModelConfig, with_memory: bool = True) -> float:
  """Forward-pass FLOPs per token (2 per multiply-add)."""
  d, h, kv, hd, f = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head, cfg.mlp_dim
  projections = 2 * d * hd * (2 * h + 2 * kv)
  mlp = 2 * 3 * d * f
  local = 2 * 2 * h * hd * cfg.segment_len / 2        # QK^T and AV over the causal half
  local += 2 * 2 * h * hd * cfg.carried_len          # and over the previous segment's carry
  per_layer = projections + mlp + local
  if with_memory and cfg.memory == "infini":
    read = 2 * h * hd * (hd + 1)                      # sigma(Q) M and sigma(Q) z
    write = 2 * kv * hd * hd * (2 if cfg.update_rule == "delta" else 1)
    per_layer += read + write + (2 * h * hd if cfg.gate == "query" else 0)   # q . u
  return cfg.num_layers * per_layer + 2 * d * cfg.vocab_size


def train_flops_per_token(cfg: ModelConfig, with_memory: bool = True) -> float:
  return 3 * forward_flops_per_token(cfg, with_memory)


def peak_flops_per_device(override: float | None = None) -> float | None:
  """The chip's dense bf16 peak; ``override`` (gin ``train.peak_flops_per_device``) wins."""
  if override:
    return override
  kind = jax.devices()[0].device_kind
  for name, peak in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return peak
  return None

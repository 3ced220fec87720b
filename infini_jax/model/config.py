"""The model's configuration: plain data, validated on construction; gin binds it at the boundary."""

import dataclasses

import jax.numpy as jnp

from infini_jax.errors import UserError

MEMORY_KINDS = ("infini", "none", "xl")
EMPTY_MEMORY_GATES = ("paper", "local_only")
GATES = ("head", "query")
LOCAL_CONTEXTS = ("segment", "two_segments")
MEMORY_GRADIENTS = ("full", "stop")
REMAT_POLICIES = ("segment", "segment_and_layer", "save_dots", "none")
ATTENTION_IMPLS = ("auto", "xla", "blocked", "cudnn", "splash", "reference")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ROPE_SCALING_KEYS = ("factor", "high_freq_factor", "low_freq_factor",
                     "original_max_position_embeddings")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A decoder-only Infini-Transformer.

  Attributes:
    vocab_size: number of token ids (the ByteVocabulary needs 259).
    num_layers, d_model, num_heads, num_kv_heads, mlp_dim: the usual sizes; query heads are grouped
      ``num_heads // num_kv_heads`` to a key/value head (GQA).
    head_dim: per-head size; None means ``d_model // num_heads``.
    segment_len: tokens per segment N; the local attention sees one segment, the memory the rest.
    memory: "infini" (Infini-attention), "none" (local-only baseline: same parameters minus beta;
      with segment_len equal to the sequence length it is full causal attention), or "xl"
      (Transformer-XL: each layer also attends to the previous segment's keys and values, with no
      gradient into them; same parameters as "none", see ``model/xl.py``).
    update_rule: "linear" (eq. 8) or "delta" (eq. 9).
    dtype: compute dtype, "float32" or "bfloat16"; parameters and the memory stay float32.
    gate_init: initial value of every gate beta (sigmoid(beta) is the weight of the memory read).
    empty_memory_gate: "paper" (eq. 10 always: with an empty memory the read is 0 and the local
      path is still scaled by 1 - sigmoid(beta)) or "local_only" (beyond the paper: while a
      sequence's memory of a key/value head is empty, z == 0, its heads output the local path
      alone, gate 0; per batch row, so it holds in decoding too).
    gate: "head" (eq. 10: one learned scalar beta per head, the same at every position) or "query"
      (beyond the paper: beta + q . u per token, with the head's raw query q and a learned
      ``u [heads, head_dim]`` that starts at zero, so the model starts as the paper's; a head may
      then read its memory at some positions and not at others). memory="infini" only.
    local_context: "segment" (eq. 6: the local attention sees its own segment) or "two_segments"
      (beyond the paper: it also sees the previous segment's keys and values, as memory="xl" does,
      with no gradient into them; the memory still holds everything before). memory="infini" only.
    previous_len: for memory="xl" and local_context="two_segments", how many of the previous
      segment's last tokens are carried and attended to: None (the whole segment, N: the paper's
      Transformer-XL baseline) or 1..N (beyond the paper: a short window across the boundary, so
      that the first tokens of a segment see their nearest context, for a carry of previous_len
      keys and values a layer instead of N).
    memory_gradient: "full" (the paper: the memory's reads and writes train W_Q, W_K, W_V) or
      "stop" (beyond the paper, a diagnostic: the memory reads and writes the projections' q, k, v
      through ``stop_gradient``, so W_Q, W_K, W_V learn from the local path alone and the memory
      path trains beta and what comes after the gate; the forward pass is unchanged; with
      gate="query" the gate's q . u still trains W_Q). memory="infini" only.
    remat: "segment" (recompute each segment in the backward pass), "segment_and_layer" (also each
      layer inside it), "save_dots" (recompute each segment but keep the outputs of all its matmuls:
      the backward pass recomputes elementwise work only; activation memory then grows with the
      number of segments by those outputs), or "none".
    scan_layers: run the layer stack as a ``jax.lax.scan`` over the stacked blocks (compile time
      independent of depth); False unrolls it (the same parameters; a longer compile, and on a CPU
      a faster step: fewer copies in and out of the stacked arrays).
    attention_impl: local-path kernel: "auto" (splash on TPU, cudnn on GPU in 16-bit floats,
      blocked on CPU, else xla), "xla" (jax.nn.dot_product_attention's XLA path), "blocked"
      (``attention.blocked_attention``: plain XLA ops, blocks of query rows, heads first; the
      fastest on CPU), "cudnn" (cuDNN flash attention, GPU only), "splash" (the Pallas
      splash-attention kernel: TPU; elsewhere in Pallas' interpreter, slowly; segment_len a
      multiple of 128), or "reference" (plain einsum softmax).
    rope_theta: RoPE base frequency.
    norm_eps: RMSNorm epsilon.
    tie_embeddings: use the embedding matrix as the output projection.
    rope_scaling: None, or Llama 3.1's RoPE frequency scaling as sorted (key, value) pairs with
      the keys ROPE_SCALING_KEYS (a dict is accepted and converted, so the config stays hashable).
    qkv_bias: biases on the query/key/value projections (Qwen2).
  """

  vocab_size: int = 259
  num_layers: int = 2
  d_model: int = 64
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int | None = None
  mlp_dim: int = 256
  segment_len: int = 64
  memory: str = "infini"
  update_rule: str = "linear"
  dtype: str = "float32"
  gate_init: float = 0.0
  empty_memory_gate: str = "paper"
  gate: str = "head"
  local_context: str = "segment"
  previous_len: int | None = None
  memory_gradient: str = "full"
  remat: str = "segment"
  scan_layers: bool = True
  attention_impl: str = "auto"
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = False
  rope_scaling: tuple | None = None
  qkv_bias: bool = False

  def __post_init__(self):
    def one_of(key, value, allowed):
      if value not in allowed:
        raise UserError(f"ModelConfig.{key}={value!r} is not one of {', '.join(map(str, allowed))}")

    if self.rope_scaling is not None:
      pairs = tuple(sorted(dict(self.rope_scaling).items()))
      if tuple(k for k, _ in pairs) != ROPE_SCALING_KEYS:
        raise UserError(f"ModelConfig.rope_scaling={self.rope_scaling!r} must have exactly the "
                        f"keys {', '.join(ROPE_SCALING_KEYS)}")
      object.__setattr__(self, "rope_scaling", pairs)
    one_of("memory", self.memory, MEMORY_KINDS)
    one_of("update_rule", self.update_rule, ("linear", "delta"))
    one_of("empty_memory_gate", self.empty_memory_gate, EMPTY_MEMORY_GATES)
    one_of("gate", self.gate, GATES)
    if self.gate != "head" and self.memory != "infini":
      raise UserError(f'ModelConfig.gate={self.gate!r} gates a compressive memory, but memory='
                      f'{self.memory!r} has none; set gate="head" or memory="infini"')
    one_of("local_context", self.local_context, LOCAL_CONTEXTS)
    if self.local_context != "segment" and self.memory != "infini":
      raise UserError(f'ModelConfig.local_context={self.local_context!r} is an option of '
                      f'memory="infini" (memory={self.memory!r}); set local_context="segment" '
                      f'(memory="xl" is the previous segment alone)')
    if self.previous_len is not None:
      if self.memory != "xl" and self.local_context != "two_segments":
        raise UserError(f'ModelConfig.previous_len={self.previous_len} sets how much of the '
                        f'previous segment is carried, but memory={self.memory!r} with '
                        f'local_context={self.local_context!r} carries none; set memory="xl" or '
                        f'local_context="two_segments", or previous_len=None')
      if not 1 <= self.previous_len <= self.segment_len:
        raise UserError(f"ModelConfig.previous_len={self.previous_len} must be in 1..segment_len "
                        f"({self.segment_len}), or None for the whole previous segment")
    one_of("memory_gradient", self.memory_gradient, MEMORY_GRADIENTS)
    if self.memory_gradient != "full" and self.memory != "infini":
      raise UserError(f'ModelConfig.memory_gradient={self.memory_gradient!r} acts on a compressive '
                      f'memory, but memory={self.memory!r} has none; set memory_gradient="full" '
                      f'or memory="infini"')
    one_of("remat", self.remat, REMAT_POLICIES)
    one_of("attention_impl", self.attention_impl, ATTENTION_IMPLS)
    one_of("dtype", self.dtype, tuple(DTYPES))
    for key in ("vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads", "mlp_dim",
                "segment_len"):
      if getattr(self, key) <= 0:
        raise UserError(f"ModelConfig.{key}={getattr(self, key)} must be positive")
    if self.head_dim is None and self.d_model % self.num_heads:
      raise UserError(
          f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; change one of "
          f"them or set head_dim explicitly")
    if self.num_heads % self.num_kv_heads:
      raise UserError(
          f"num_heads={self.num_heads} is not divisible by num_kv_heads={self.num_kv_heads}; "
          f"set num_kv_heads to a divisor of num_heads (each key/value head serves the same "
          f"number of query heads)")
    if self.dim_per_head % 2:
      raise UserError(f"head dimension {self.dim_per_head} must be even for RoPE; set head_dim")

  @property
  def dim_per_head(self) -> int:
    return self.head_dim if self.head_dim is not None else self.d_model // self.num_heads

  @property
  def group_size(self) -> int:
    """Query heads per key/value head."""
    return self.num_heads // self.num_kv_heads

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  def num_segments(self, seq_len: int) -> int:
    """Segments in a sequence of ``seq_len`` tokens; raises unless seq_len is a multiple of N."""
    if seq_len <= 0 or seq_len % self.segment_len:
      raise UserError(
          f"sequence length {seq_len} is not a multiple of segment_len {self.segment_len}; set "
          f"SEQ_LEN to a multiple of {self.segment_len} (or change SEGMENT_LEN)")
    return seq_len // self.segment_len

  def memory_state_size(self) -> int:
    """Numbers carried from one segment to the next, per sequence.

    infini: M and z, d_key x (d_value + 1) x H_kv x L (with local_context="two_segments" also
    the previous segment's carried keys and values); xl: the previous segment's carried keys and
    values, 2 x carried_len x H_kv x d x L; none: 0.
    """
    return self.compressive_state_size() + self.previous_segment_size()

  def compressive_state_size(self) -> int:
    """M and z per sequence (float32): d_key x (d_value + 1) x H_kv x L; 0 without them."""
    d = self.dim_per_head
    return d * (d + 1) * self.num_kv_heads * self.num_layers if self.memory == "infini" else 0

  @property
  def carried_len(self) -> int:
    """Tokens of the previous segment each layer carries and attends to: previous_len (N when
    None) for memory="xl" and local_context="two_segments"; else 0."""
    if self.memory == "xl" or self.local_context == "two_segments":
      return self.segment_len if self.previous_len is None else self.previous_len
    return 0

  def previous_segment_size(self) -> int:
    """The previous segment's carried keys and values per sequence (compute dtype),
    2 x carried_len x H_kv x d x L (0 without them)."""
    return 2 * self.carried_len * self.dim_per_head * self.num_kv_heads * self.num_layers

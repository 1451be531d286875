"""Training FLOPs per token, written as formulas of the layer shapes; each mixer's own formula
lives beside it in backbones/ and is reached through the registry.

A token is one column of the pattern sequence: one frame position, whose K codebook entries are
embedded and summed into a single backbone position and read out by the K heads. So the K
codebooks of a column are one token, not K.

`forward_flops` mirrors what the pure-PyTorch model computes for one sequence (batch 1):

    prefix:  [ text_0 ... text_{L-1} | seq_0 ... seq_{T-1} ]   backbone over L + T positions
    cross:   [ start | seq_0 ... seq_{T-1} ]                   backbone over 1 + T positions,
                                                               cross-attending to L text positions

An empty caption still runs as one (null) text position, as `MusicLM` does. The heads read T + 1
columns (the last one predicts the column after the sequence).

Counted, at 2 m n k per (m, k) x (k, n) product:
- every Linear: text projection, in_proj, x_proj, dt_proj, out_proj, qkv, the MLPs, the heads;
- the Mamba-2 SSD scan's four matrix products, at the lengths our chunked scan runs them
  (the sequence padded to a multiple of chunk_size; the intra-chunk products cost chunk_size per
  position, so this term grows with chunk_size);
- the Mamba-3 scan's four products (ops/ssd3.py), likewise at the padded length, each position
  standing for its R ranks with MIMO;
- the Mamba-1 selective scan's read-out y = h . C, at the padded length;
- attention scores and weighted sums at full (T, T) cost, as SDPA computes them: causality
  halves no work;
- the depthwise causal convolution, at 2 d_conv per channel and position.
Not counted (elementwise, as torch.utils.flop_counter does not count them either): norms,
activations, softplus and exp, gates, the D skip, rotary embeddings, softmax, the SSD's segment
sums, decay weights and state passing between chunks, the Mamba-1 doubling scan's multiply-adds
(about 9 d_inner d_state per position in mamba_ssm's count: 2% of a mamba-300m layer, 16% of a
tiny-mamba one), embedding lookups and the loss. The counter does not see the convolution either,
which we write as shifted multiply-adds, not a conv op; it is under 1% of a layer.

Training costs 3x the forward: the backward pass computes, for each product, the gradients of both
operands, each a product of the same size.
"""

from __future__ import annotations

from ssmttm.backbones import BackboneConfig, mixer_spec
from ssmttm.backbones.attention import cross_attention_flops
from ssmttm.backbones.base import matmul_flops
from ssmttm.lm import LMConfig


def forward_flops(cfg: LMConfig, seq_len: int, text_len: int = 0) -> float:
    """FLOPs of one forward pass of MusicLM over one sequence (B=1).

    text_len text positions (prefix conditioning) or cross-attention memory, plus seq_len
    codec-frame columns. See the module docstring for what is counted.
    """
    if seq_len < 0 or text_len < 0:
        raise ValueError(f"lengths must be non-negative, got seq_len={seq_len}, text_len={text_len}")
    d = cfg.backbone.d_model
    text = max(text_len, 1)  # an empty caption becomes one null position
    cross = cfg.conditioning == "cross"
    length = (1 if cross else text) + seq_len  # backbone positions: prefix (or start) + columns
    return (
        matmul_flops(text, cfg.text_dim, d)  # text projection
        + _backbone_flops(cfg.backbone, length, memory=text if cross else 0)
        + cfg.num_codebooks * matmul_flops(seq_len + 1, d, cfg.vocab_size)  # K output heads
    )


def training_flops_per_token(cfg: LMConfig, seq_len: int, text_len: int = 0) -> float:
    """3 * forward_flops / seq_len: forward plus backward per audio frame column."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    return 3.0 * forward_flops(cfg, seq_len, text_len) / seq_len


def _backbone_flops(cfg: BackboneConfig, length: int, memory: int) -> float:
    """The residual stack over `length` positions; memory > 0 adds cross-attention to it."""
    d = cfg.d_model
    mixer = mixer_spec(cfg.kind).flops(cfg, length)
    cross = cross_attention_flops(d, length, memory) if memory else 0.0
    mlp = 2 * matmul_flops(length, d, cfg.mlp_hidden)  # fc1 and fc2; zero without an MLP
    return cfg.n_layers * (mixer + cross + mlp)

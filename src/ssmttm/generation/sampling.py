"""Guidance and sampling, vectorised over the batch and all codebooks at once."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ssmttm.config import SamplingConfig

__all__ = ["SamplingConfig", "classifier_free_guidance", "filter_logits", "sample"]


def classifier_free_guidance(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """uncond + scale * (cond - uncond): scale 1 is the conditional model, 0 the unconditional."""
    return uncond + scale * (cond - uncond)


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 0.0) -> Tensor:
    """logits (..., V) with everything outside the top k, or outside the nucleus of mass top_p, at -inf.

    The most likely token always survives, so top_k 1 (or a tiny top_p) is greedy decoding.
    """
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if 0 < top_p < 1:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each one
        ordered = ordered.masked_fill(before >= top_p, -torch.inf)
        logits = torch.full_like(logits, -torch.inf).scatter(-1, order, ordered)
    return logits


def sample(
    logits: Tensor,
    temperature: float,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    top_k: int = 0,
    top_p: float = 0.0,
) -> Tensor:
    """logits (B, ..., V) -> token ids (B, ...). Temperature 0 means greedy (argmax).

    Sampling is the Gumbel-max trick: argmax(logits / T + Gumbel noise) draws from softmax(logits / T),
    and lets each row take its noise from its own generator (one seed per prompt), while the
    argmax runs over the whole batch and every codebook at once.
    """
    logits = filter_logits(logits.float(), top_k, top_p)
    if temperature <= 0:
        return logits.argmax(dim=-1)
    if isinstance(generator, Sequence):
        if len(generator) != logits.shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {logits.shape[0]}")
        uniform = torch.stack([torch.rand(logits.shape[1:], generator=g, device=logits.device) for g in generator])
    else:
        uniform = torch.rand(logits.shape, generator=generator, device=logits.device)
    gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-20, max=1 - 1e-7)))
    return (logits / temperature + gumbel).argmax(dim=-1)

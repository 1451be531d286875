"""Guidance and sampling, vectorised over the batch and all codebooks at once."""

from __future__ import annotations

import torch
from torch import Tensor


def classifier_free_guidance(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """uncond + scale * (cond - uncond): scale 1 is the conditional model, 0 the unconditional."""
    return uncond + scale * (cond - uncond)


def sample(logits: Tensor, temperature: float, generator: torch.Generator | None = None) -> Tensor:
    """logits (..., V) -> token ids (...). Temperature 0 means greedy (argmax)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
    return flat.view(logits.shape[:-1])

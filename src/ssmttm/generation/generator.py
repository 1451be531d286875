"""The generator owns decoding: prefill, step, guidance, sampling and the pattern's bookkeeping.

The LM only knows `prefill` and `step`; everything about how to turn logits into a sequence lives
here, so the model's `forward` stays the training path. Each step costs the same at any length for
SSM backbones (a fixed-size state) and grows with the KV cache for the transformer.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ssmttm.generation.sampling import classifier_free_guidance, sample
from ssmttm.lm import MusicLM
from ssmttm.ops.linear import cast_linear_weights


@dataclass
class SamplingConfig:
    temperature: float = 1.0  # 0 means greedy
    cfg_scale: float = 3.0  # 1 means no guidance: the unconditional branch is not run at all


class Generator:
    def __init__(self, lm: MusicLM, weight_dtype: torch.dtype | None = None) -> None:
        """weight_dtype: decode with a private copy of the model whose Linear weights are stored in
        this dtype (bf16 halves the bytes a step reads); the state and activations stay fp32.

        On the CPU, steps use the C++ kernels of ops/cpu_kernels.py wherever they build.
        """
        if weight_dtype is not None and weight_dtype != torch.float32:
            lm = cast_linear_weights(copy.deepcopy(lm), weight_dtype)
        self.lm = lm.eval()

    @torch.no_grad()
    def generate(
        self,
        text: Tensor,
        text_mask: Tensor | None,
        num_frames: int,
        sampling: SamplingConfig | None = None,
        seed: int | None = None,
        progress: bool = False,
    ) -> Tensor:
        """text (B, L, text_dim), left-padded with text_mask (B, L) -> codes (B, K, num_frames)."""
        columns = list(self.columns(text, text_mask, num_frames, sampling, seed, progress))
        return self.lm.pattern.revert(torch.stack(columns, dim=-1), num_frames)

    @torch.no_grad()
    def columns(
        self,
        text: Tensor,
        text_mask: Tensor | None,
        num_frames: int,
        sampling: SamplingConfig | None = None,
        seed: int | None = None,
        progress: bool = False,
    ) -> Iterator[Tensor]:
        """Yield the pattern sequence one column (B, K) at a time, special ids included."""
        sampling = sampling or SamplingConfig()
        pattern = self.lm.pattern
        batch = text.shape[0]
        guided = sampling.cfg_scale != 1.0
        if text_mask is None:
            text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
        if guided:  # the unconditional twin of each row: no real text, i.e. the null condition
            text = torch.cat([text, torch.zeros_like(text)])
            text_mask = torch.cat([text_mask, torch.zeros_like(text_mask)])
        generator = None if seed is None else torch.Generator(text.device).manual_seed(seed)
        valid = pattern.valid_mask(num_frames, device=text.device)  # (K, S)
        logits, state = self.lm.prefill(text, text_mask)
        length = valid.shape[1]
        for s in tqdm(range(length), disable=not progress, desc="generating", unit="step"):
            if guided:
                logits = classifier_free_guidance(logits[:batch], logits[batch:], sampling.cfg_scale)
            tokens = self._sample_column(logits, valid[:, s], sampling, generator)
            yield tokens
            if s + 1 < length:
                logits, state = self.lm.step(torch.cat([tokens, tokens]) if guided else tokens, state)

    def _sample_column(
        self, logits: Tensor, valid: Tensor, sampling: SamplingConfig, generator: torch.Generator | None
    ) -> Tensor:
        """logits (B, K, V) -> tokens (B, K): sampled where the pattern holds a real frame."""
        special = self.lm.cfg.special_token
        if not bool(valid.any()):
            return torch.full(logits.shape[:2], special, dtype=torch.long, device=logits.device)
        logits = logits.clone()
        logits[..., special] = -torch.inf  # the special id is never audio
        tokens = sample(logits, sampling.temperature, generator)
        return torch.where(valid[None, :], tokens, special)

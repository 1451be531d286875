"""The generator owns decoding: prefill, step, guidance, sampling and the pattern's bookkeeping.

The LM only knows `prefill` and `step`; everything about how to turn logits into a sequence lives
here, so the model's `forward` stays the training path. Each step costs the same at any length for
SSM backbones (a fixed-size state) and grows with the KV cache for the transformer.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ssmttm.backbones import mixer_spec
from ssmttm.conditioning import Conditioning
from ssmttm.generation.cuda_graph import GraphedStep, graphs_apply
from ssmttm.generation.sampling import SamplingConfig, classifier_free_guidance, sample
from ssmttm.lm import MusicLM
from ssmttm.ops.linear import cast_linear_weights
from ssmttm.ops.quantize import DEFAULT_GROUP, quantize_linear_weights, weight_format


class Generator:
    def __init__(
        self,
        lm: MusicLM,
        *,
        weight_dtype: torch.dtype | None = None,
        state_dtype: torch.dtype | None = None,
        cuda_graph: bool | None = None,
        quantize: str | None = None,
        group: int = DEFAULT_GROUP,
    ) -> None:
        """weight_dtype: decode with a private copy of the model whose Linear weights are stored in
        this dtype (bf16 halves the bytes a step reads); activations stay fp32.

        quantize: "int8" or "int4" (in groups of `group` inputs) decodes with a private copy whose
        Linear weights are packed so (ops/quantize.py: a quarter or an eighth of fp32's bytes, each
        Linear's activations quantized per row to int8 on the way in).

        state_dtype: store the SSM's recurrent state in this dtype between steps (bf16: half the
        bytes; at batch 16 the state is most of what a step reads and writes). Each step updates
        and reads it out in fp32 and rounds once when storing, as mamba_ssm does when it decodes
        in bf16. The prefill's state is computed in fp32 and then rounded. None or fp32: fp32.
        SSM backbones only: a Transformer's KV cache is not a recurrent state.

        cuda_graph: on a GPU, capture the step once per call and replay it (cuda_graph.py), which
        the SSM backbones allow; None (the default) does so wherever it applies, False never, True
        where it applies and raises elsewhere. The tokens are the same either way.

        On the CPU, steps use the C++ kernels of ops/cpu_kernels.py wherever they build.
        """
        weights = mixer_spec(lm.cfg.backbone.kind).weight_dtypes
        if weight_dtype is not None and weight_dtype not in weights:
            choices = " or ".join(map(str, weights))
            raise ValueError(f"a {lm.cfg.backbone.kind} decodes with {choices} weights, not {weight_dtype}")
        if weight_dtype is not None and weight_dtype != torch.float32:
            lm = cast_linear_weights(copy.deepcopy(lm), weight_dtype)
        if quantize is not None:
            lm = quantize_linear_weights(
                lm if weight_dtype not in (None, torch.float32) else copy.deepcopy(lm), quantize, group
            )
        if state_dtype == torch.float32:
            state_dtype = None
        if state_dtype is not None:
            spec = mixer_spec(lm.cfg.backbone.kind)
            if not spec.fixed_state:
                raise ValueError(
                    f"state_dtype applies to an SSM's recurrent state; a {lm.cfg.backbone.kind} has a KV cache"
                )
            if state_dtype not in spec.state_dtypes:  # fp16's range could overflow a state; the kernels take bf16
                choices = " or ".join(map(str, spec.state_dtypes))
                raise ValueError(f"state_dtype must be {choices}, not {state_dtype}")
        self.lm = lm.eval()
        self.cuda_graph = cuda_graph
        self.state_dtype = state_dtype

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype the Linear weights are stored in as this generator decodes (what it runs, not
        what was asked: the sidecar of `ssmttm generate` records it)."""
        return next(m.weight.dtype for m in self.lm.modules() if isinstance(m, nn.Linear))

    @property
    def weight_format(self) -> str:
        """ "float32", "bfloat16", "int8" or "int4-g<size>": the Linear weights as this generator
        decodes with them (packed ones have an integer dtype that does not say which)."""
        return weight_format(next(m.weight for m in self.lm.modules() if isinstance(m, nn.Linear)))

    @torch.no_grad()
    def generate(
        self,
        cond: Conditioning,
        num_frames: int,
        *,
        sampling: SamplingConfig | None = None,
        seed: int | Sequence[int] | None = None,
        continuation: Tensor | None = None,
        progress: bool = False,
    ) -> Tensor:
        """codes (B, K, num_frames) for the B prompts of `cond`; keywords as `columns`."""
        columns = self.columns(
            cond, num_frames, sampling=sampling, seed=seed, continuation=continuation, progress=progress
        )
        return self.lm.pattern.revert(torch.stack(list(columns), dim=-1), num_frames)

    @torch.no_grad()
    def columns(
        self,
        cond: Conditioning,
        num_frames: int,
        *,
        sampling: SamplingConfig | None = None,
        seed: int | Sequence[int] | None = None,
        continuation: Tensor | None = None,
        progress: bool = False,
    ) -> Iterator[Tensor]:
        """Yield the pattern sequence one column (B, K) at a time, special ids included.

        cond: the B prompts' conditions. Guided sampling (cfg_scale != 1) runs their unconditional
        twins beside them: those `cond` holds, or else the LM's null condition.
        seed: one per prompt, or an int s giving prompt i the seed s + i, so a prompt's result does
        not depend on what else is in the batch.
        continuation (B, K, P), P <= num_frames: codes to continue; the output starts with them. The
        columns they fill entirely are run in parallel by `prefill`; in the columns they fill in
        part (the delay pattern's staircase) their tokens overwrite the sampled ones.
        """
        sampling = sampling or SamplingConfig()
        pattern = self.lm.pattern
        guided = sampling.cfg_scale != 1.0
        cond = cond.with_null_twins() if guided else cond.prompt_rows()
        batch, device = cond.batch, cond.text.device
        generators = _row_generators(seed, batch, device)
        valid = pattern.valid_mask(num_frames, device=device)  # (K, S)
        length = valid.shape[1]
        known, given = self._continuation_columns(continuation, num_frames, length, batch, device)
        full = int((known | ~valid).all(dim=0).long().cumprod(0).sum())  # columns the continuation fills entirely
        seq = given[..., :full]
        logits, state = self.lm.prefill(cond, torch.cat([seq, seq]) if guided else seq)
        if self.state_dtype is not None:
            state = state.with_recurrent_dtype(self.state_dtype)
        step = self.lm.step
        if self._graphed(device) and length - full > 1:
            graphed = GraphedStep(self.lm, state, torch.cat([given[..., 0]] * 2) if guided else given[..., 0])

            def step(tokens: Tensor, _: object) -> tuple[Tensor, None]:
                return graphed(tokens), None

        valid_any = valid.any(dim=0).tolist()  # read once: a per-step check on the device would wait for it
        for s in range(full):
            yield given[..., s]
        for s in tqdm(range(full, length), disable=not progress, desc="generating", unit="step"):
            if guided:
                logits = classifier_free_guidance(logits[:batch], logits[batch:], sampling.cfg_scale)
            tokens = self._sample_column(logits, valid[:, s], valid_any[s], sampling, generators)
            if continuation is not None:  # the staircase of a continuation: its tokens, not sampled ones
                tokens = torch.where(known[:, s], given[..., s], tokens)
            yield tokens
            if s + 1 < length:
                logits, state = step(torch.cat([tokens, tokens]) if guided else tokens, state)

    def _graphed(self, device: torch.device) -> bool:
        if self.cuda_graph is False:
            return False
        applies = graphs_apply(self.lm, device)
        if self.cuda_graph and not applies:
            kind = self.lm.cfg.backbone.kind
            raise ValueError(
                f"cuda_graph=True needs a CUDA device and a fixed-size state; this is a {kind} on {device}"
            )
        return applies

    def _continuation_columns(
        self, codes: Tensor | None, num_frames: int, length: int, batch: int, device
    ) -> tuple[Tensor, Tensor]:
        """known (K, S): positions the continued codes fix; given (B, K, S): those codes in pattern order."""
        pattern, special = self.lm.pattern, self.lm.cfg.special_token
        if codes is None:
            return (
                torch.zeros(pattern.num_codebooks, length, dtype=torch.bool, device=device),
                torch.full((batch, pattern.num_codebooks, length), special, dtype=torch.long, device=device),
            )
        if codes.dim() != 3 or codes.shape[:2] != (batch, pattern.num_codebooks) or codes.shape[2] > num_frames:
            raise ValueError(
                f"continuation codes must be (B={batch}, K={pattern.num_codebooks}, P <= {num_frames}), "
                f"got {tuple(codes.shape)}"
            )
        frames = codes.shape[2]
        codes = codes.to(device)  # a codec may encode on another device (the spectral codecs: CPU)
        padded = torch.cat([codes, codes.new_full((batch, pattern.num_codebooks, num_frames - frames), special)], -1)
        return pattern.valid_mask(frames, length, device=device), pattern.build(padded)

    def _sample_column(
        self, logits: Tensor, valid: Tensor, any_valid: bool, sampling: SamplingConfig, generators
    ) -> Tensor:
        """logits (B, K, V) -> tokens (B, K): sampled where the pattern holds a real frame."""
        special = self.lm.cfg.special_token
        if not any_valid:
            return torch.full(logits.shape[:2], special, dtype=torch.long, device=logits.device)
        logits = logits.clone()
        logits[..., special] = -torch.inf  # the special id is never audio
        tokens = sample(logits, sampling.temperature, generators, sampling.top_k, sampling.top_p)
        return torch.where(valid[None, :], tokens, special)


def _row_generators(seed: int | Sequence[int] | None, batch: int, device) -> list[torch.Generator] | None:
    if seed is None:
        return None
    seeds = [seed + i for i in range(batch)] if isinstance(seed, int) else list(seed)
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for {batch} prompts")
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]

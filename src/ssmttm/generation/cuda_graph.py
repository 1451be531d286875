"""A decoding step captured once in a CUDA graph and replayed at every position.

In eager mode a GPU step of a small LM is hundreds of tiny kernel launches, and the GPU waits on
Python between them (benchmarks/README.md, gpu_speed.py: 25-55 steps/s on an H200, where the
graphed step runs at 277). A graph records the launches once and replays them in one call.

Only a state of fixed size can be captured (the registry's `MixerSpec.cuda_graph`): the SSM
backbones update theirs in place, so the same tensors serve every position, and one capture serves
a whole clip. The transformer's KV cache grows, so it decodes eagerly. The position and the beat
clock's column, plain ints in eager mode, become device tensors here, advanced inside the graph.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ssmttm.backbones import mixer_spec
from ssmttm.lm import LMState, MusicLM

WARMUP_STEPS = 3  # eager steps on a side stream before capture, as CUDA graph capture requires


def graphs_apply(lm: MusicLM, device: torch.device) -> bool:
    """Whether `lm` can decode from a captured graph on `device`: CUDA and a fixed-size state."""
    return device.type == "cuda" and mixer_spec(lm.cfg.backbone.kind).cuda_graph


class GraphedStep:
    """`lm.step` for one batch, captured from `state`; call it with each column's tokens.

    The object owns the decoding state from then on (its tensors are the graph's inputs and are
    updated in place), and the logits it returns are one buffer that the next call overwrites.
    """

    def __init__(self, lm: MusicLM, state: LMState, tokens: Tensor) -> None:
        if not graphs_apply(lm, tokens.device):
            raise ValueError(f"a {lm.cfg.backbone.kind} backbone on {tokens.device} cannot decode from a CUDA graph")
        device = tokens.device
        self.lm = lm
        self.tokens = tokens.clone()
        self.state = dataclasses.replace(
            state,
            position=torch.as_tensor(state.position, device=device).clone(),
            column=torch.as_tensor(state.column, device=device).clone(),
        )
        start = self.state.clone()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm up (lazy inits, cuBLAS handles) off the capturing stream
            for _ in range(WARMUP_STEPS):
                self._step()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._step()
        _copy_into(self.state, start)  # undo the warm-up steps: the first replay starts where `state` was

    def __call__(self, tokens: Tensor) -> Tensor:
        """tokens (B, K) of the current column -> the next column's logits (B, K, V)."""
        self.tokens.copy_(tokens)
        self.graph.replay()
        return self.logits

    def _step(self) -> Tensor:
        logits, after = self.lm.step(self.tokens, self.state)
        if [t.data_ptr() for t in after.backbone.tensors()] != [t.data_ptr() for t in self.state.backbone.tensors()]:
            raise RuntimeError("the backbone's step did not update its state in place: a replay would not carry it")
        self.state.position.copy_(after.position)
        self.state.column.copy_(after.column)
        return logits


def _copy_into(state: LMState, source: LMState) -> None:
    for target, value in zip(state.tensors(), source.tensors(), strict=True):
        target.copy_(value)

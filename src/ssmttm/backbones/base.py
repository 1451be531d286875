"""The contract every backbone and every mixer implements, and the state they pass around.

- `forward(x, ctx) -> y`: the parallel training path over x (B, T, D).
- `prefill(x, ctx) -> (y, state)`: the same, plus the decoding state after the last position.
- `step(x_t, state) -> (y_t, state)`: one more position, x_t (B, D), in constant time for SSMs
  and with a KV cache for attention.

A state is a typed dataclass, passed in and returned, never kept on the module. `step` may
update its tensors in place (a fresh multi-MB state per layer and step would cost more than the
step itself), so a caller that wants to keep an old state takes `state.clone()` first.
States can be indexed and concatenated along the batch, for CFG and for batching prompts.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import Tensor, nn

S = TypeVar("S", bound="BatchState")


@dataclass
class Context:
    """What a backbone needs besides its input sequence.

    mask: (B, T) bool, True where the position is real. A masked position is absent: it feeds
      no input to the mixers and leaves their state untouched. None means every position is real.
    memory: (B, L, D) the projected text that cross-attention reads; memory_mask (B, L) likewise.
    """

    mask: Tensor | None = None
    memory: Tensor | None = None
    memory_mask: Tensor | None = None


class BatchState:
    """Mixin for decoding-state dataclasses whose tensors all have the batch on dim 0.

    Fields may be tensors, nested states, lists of them, None, or plain values (a sequence
    length, a position) that must agree between states being concatenated.
    """

    # The fields holding an SSM's recurrent state: the bulk of a step's memory traffic at large
    # batches, and what `with_recurrent_dtype` stores in a lower precision. Convolution windows,
    # KV caches and positions are left alone.
    recurrent_fields: ClassVar[tuple[str, ...]] = ()

    def check_rows(self, rows: int) -> None:
        """Raise ValueError unless a step of `rows` input rows fits this state. A mixer whose step
        would broadcast one row over another's batch (or whose kernel would read past it) says so
        here; the default trusts the step's own shape errors."""

    def with_recurrent_dtype(self: S, dtype: torch.dtype) -> S:
        """This state with every recurrent field, nested ones included, stored in `dtype`.

        The other tensors (convolution windows, caches) are this state's own, not copies: take
        `clone()` first to step both."""
        changes = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name in self.recurrent_fields and isinstance(value, Tensor):
                changes[f.name] = value.to(dtype)
            elif isinstance(value, BatchState):
                changes[f.name] = value.with_recurrent_dtype(dtype)
            elif isinstance(value, list):
                changes[f.name] = [v.with_recurrent_dtype(dtype) if isinstance(v, BatchState) else v for v in value]
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def select(self: S, index: slice | Tensor | Sequence[int]) -> S:
        """The rows `index` of the batch (a slice or index list; an int would drop the dim)."""
        return _combine([self], lambda ts: ts[0][index])

    def clone(self: S) -> S:
        return _combine([self], lambda ts: ts[0].clone())

    @classmethod
    def cat(cls: type[S], states: Sequence[S]) -> S:
        return _combine(list(states), torch.cat)

    def tensors(self) -> list[Tensor]:
        """Every tensor of the state, nested ones included, in field order."""
        found: list[Tensor] = []
        _combine([self], lambda ts: found.append(ts[0]) or ts[0])
        return found


def _combine(items: list[Any], on_tensors: Callable[[list[Tensor]], Tensor]) -> Any:
    first = items[0]
    if isinstance(first, Tensor):
        return on_tensors(items)
    if isinstance(first, BatchState):
        return type(first)(
            **{
                f.name: _combine([getattr(item, f.name) for item in items], on_tensors)
                for f in dataclasses.fields(first)  # type: ignore[arg-type]
            }
        )
    if isinstance(first, list):
        return [_combine(list(column), on_tensors) for column in zip(*items, strict=True)]
    if any(item != first for item in items):
        raise ValueError(f"cannot combine states that differ in {first!r} vs {items}")
    return first


class Mixer(nn.Module, ABC, Generic[S]):
    """A sequence mixer (SSM or attention): the backbone contract at the level of one layer."""

    @abstractmethod
    def forward(self, x: Tensor, ctx: Context) -> Tensor: ...

    @abstractmethod
    def prefill(self, x: Tensor, ctx: Context) -> tuple[Tensor, S]: ...

    @abstractmethod
    def step(self, x: Tensor, state: S) -> tuple[Tensor, S]: ...


class Backbone(Mixer[S], ABC):
    """A whole backbone: (B, T, D) in, (B, T, D) out, under the same three-method contract."""

    d_model: int


def matmul_flops(m: int, k: int, n: int) -> float:
    """An (m, k) x (k, n) matrix product, at 2 m n k: the unit of every FLOP formula here."""
    return 2.0 * m * k * n


def padded_length(length: int, chunk_size: int) -> int:
    """The length the chunked scans run at: padded up to a multiple of chunk_size."""
    return -(-length // chunk_size) * chunk_size


def real_positions(ctx: Context, x: Tensor) -> Tensor | None:
    """The mask as a (B, T, 1) multiplier in x's dtype, or None when every position is real."""
    if ctx.mask is None:
        return None
    return ctx.mask[..., None].to(x.dtype)

"""What the LM is conditioned on: one object, built once per batch or generation, passed down as is.

The LM's `forward`, `compute_loss` and `prefill` read it; the generator builds the unconditional
rows of classifier-free guidance into it once, rather than each layer of the call concatenating
them. A new condition (for instance, another stage's tokens) is one new field here, read where
it is used, not an argument threaded through every signature between the caller and the layer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from ssmttm.beat_clock import no_clock


@dataclass
class Conditioning:
    """Rows of conditions for the LM: R = B prompts, then, when `guided`, their B unconditional twins.

    text: (R, L, text_dim) embeddings, left-padded (ssmttm.text); L may be 0 (no text at all).
    mask: (R, L) bool, True at real positions; None when every position is real. A row with no
      real position is the LM's null condition.
    clock: (R, 2) each row's beat clock (beat_clock.py), NaN where no tempo is stated; None when
      the model reads none.
    prompts: B, the rows that are prompts; rows B..R are CFG's unconditional twins, in the same
      order. None: every row is a prompt.
    """

    text: Tensor
    mask: Tensor | None = None
    clock: Tensor | None = None
    prompts: int | None = None

    def __post_init__(self) -> None:
        rows = self.text.shape[0]
        if self.mask is not None and self.mask.shape != self.text.shape[:2]:
            raise ValueError(f"a text mask {tuple(self.mask.shape)} for text {tuple(self.text.shape)}")
        if self.clock is not None and self.clock.shape != (rows, 2):
            raise ValueError(f"a beat clock {tuple(self.clock.shape)} for {rows} rows; it must be ({rows}, 2)")
        if self.prompts is not None and rows not in (self.prompts, 2 * self.prompts):
            raise ValueError(f"{self.prompts} prompts in {rows} rows: each prompt has one unconditional twin or none")

    @property
    def rows(self) -> int:
        return self.text.shape[0]

    @property
    def batch(self) -> int:
        """B: how many prompts, the rows a generation returns."""
        return self.rows if self.prompts is None else self.prompts

    @property
    def guided(self) -> bool:
        """Whether the rows after the prompts hold their unconditional twins."""
        return self.batch < self.rows

    def real_mask(self) -> Tensor:
        """(R, L) bool: the mask, with None spelled out."""
        if self.mask is not None:
            return self.mask.bool()
        return torch.ones(self.text.shape[:2], dtype=torch.bool, device=self.text.device)

    def with_null_twins(self) -> Conditioning:
        """These prompts followed by as many rows of the LM's null condition (no real text
        position, no clock): CFG's unconditional branch when no other was given."""
        if self.guided:
            return self
        clock = None if self.clock is None else torch.cat([self.clock, no_clock(self.rows, self.clock.device)])
        mask = self.real_mask()
        return Conditioning(
            torch.cat([self.text, torch.zeros_like(self.text)]),
            torch.cat([mask, torch.zeros_like(mask)]),
            clock,
            prompts=self.rows,
        )

    def prompt_rows(self) -> Conditioning:
        """The prompts alone, without unconditional twins (unguided decoding)."""
        if not self.guided:
            return self
        b = self.batch
        pick = lambda t: None if t is None else t[:b]  # noqa: E731
        return Conditioning(self.text[:b], pick(self.mask), pick(self.clock))

    def to(self, device: torch.device | str) -> Conditioning:
        """The same conditions on `device`; the clock stays float64, as it must to count beats exactly."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return dataclasses.replace(self, text=move(self.text), mask=move(self.mask), clock=move(self.clock))

"""Codebook interleaving: how K parallel codebook streams become one LM sequence, and back.

A pattern shifts codebook k right by `shifts[k]` steps and fills the gap with the special id
(which equals the codebook size). The LM reads and predicts the shifted sequence one column at
a time; the pattern says which positions of that sequence hold real tokens, so that the loss
ignores the others and the sampler never emits a special id as audio.

- `delay` is the release's pattern: codebook k is shifted by k+1, so even K=1 gets one start
  column of special ids. Column 0 is then all special and acts as the start token.
- `parallel` shifts nothing: column 0 holds real tokens, predicted from the text alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class CodebookPattern:
    shifts: tuple[int, ...]
    special: int

    @property
    def num_codebooks(self) -> int:
        return len(self.shifts)

    @property
    def max_shift(self) -> int:
        return max(self.shifts)

    def sequence_length(self, num_frames: int) -> int:
        """Columns needed so that every codebook holds all `num_frames` frames."""
        return num_frames + self.max_shift

    def build(self, codes: Tensor, length: int | None = None) -> Tensor:
        """codes (B, K, T) -> sequence (B, K, S), S = `length` or T + max shift.

        With `length=T` this is the release's `to_delay`: the array keeps its length and the last
        `shift` frames of each codebook fall off the end.
        """
        batch, num_codebooks, num_frames = codes.shape
        self._check_codebooks(num_codebooks)
        length = self.sequence_length(num_frames) if length is None else length
        seq = codes.new_full((batch, num_codebooks, length), self.special)
        for k, shift in enumerate(self.shifts):
            n = max(0, min(num_frames, length - shift))
            seq[:, k, shift : shift + n] = codes[:, k, :n]
        return seq

    def revert(self, seq: Tensor, num_frames: int | None = None) -> Tensor:
        """sequence (B, K, S) -> codes (B, K, T), T = `num_frames` or S - max shift.

        Frames that the sequence does not hold (they fell off a truncated array) are special ids.
        """
        batch, num_codebooks, length = seq.shape
        self._check_codebooks(num_codebooks)
        num_frames = length - self.max_shift if num_frames is None else num_frames
        codes = seq.new_full((batch, num_codebooks, num_frames), self.special)
        for k, shift in enumerate(self.shifts):
            n = max(0, min(num_frames, length - shift))
            codes[:, k, :n] = seq[:, k, shift : shift + n]
        return codes

    def valid_mask(self, num_frames: int, length: int | None = None, device=None) -> Tensor:
        """(K, S) bool: True where the sequence holds a real frame of a `num_frames`-frame clip."""
        length = self.sequence_length(num_frames) if length is None else length
        steps = torch.arange(length, device=device)
        shifts = torch.tensor(self.shifts, device=device)[:, None]
        frame = steps[None, :] - shifts
        return (frame >= 0) & (frame < num_frames)

    def _check_codebooks(self, num_codebooks: int) -> None:
        if num_codebooks != self.num_codebooks:
            raise ValueError(f"pattern is for {self.num_codebooks} codebooks, got {num_codebooks}")


class StreamingRevert:
    """`revert` one column at a time: push sequence columns (B, K) as they are generated, get back
    the frames (B, K, n) they complete. A frame is complete once its most-shifted codebook has
    arrived, so at most `max_shift` columns are held, whatever the length."""

    def __init__(self, pattern: CodebookPattern) -> None:
        self.pattern = pattern
        self._columns: list[Tensor] = []  # the last max_shift + 1 columns, oldest first
        self._pushed = 0

    def push(self, column: Tensor) -> Tensor:
        """column (B, K), the next one -> (B, K, 1) with the frame it completes, or (B, K, 0)."""
        pattern = self.pattern
        keep = self._columns[max(0, len(self._columns) - pattern.max_shift) :]  # ([-0:] would keep all)
        self._columns = [*keep, column]
        self._pushed += 1
        frame = self._pushed - 1 - pattern.max_shift  # the frame whose last codebook this column holds
        if frame < 0:
            return column.new_empty((*column.shape, 0))
        first = self._pushed - len(self._columns)  # absolute index of the oldest column held
        rows = [self._columns[frame + shift - first][:, k] for k, shift in enumerate(pattern.shifts)]
        return torch.stack(rows, dim=1)[..., None]


def make_pattern(name: str, num_codebooks: int, special: int) -> CodebookPattern:
    if name == "delay":
        return CodebookPattern(tuple(k + 1 for k in range(num_codebooks)), special)
    if name == "parallel":
        return CodebookPattern((0,) * num_codebooks, special)
    raise ValueError(f"unknown codebook pattern {name!r}; choose delay or parallel")

"""The music language model: codebook embeddings, text conditioning, backbone, heads, loss.

Sequence layout (prefix conditioning, the release's):

    [ text_0 ... text_{L-1} | seq_0 ... seq_{T-1} ]      seq = the pattern's interleaved codes
                         ^ logits are read from here on: output i predicts seq_i

so `forward(seq)` returns T + 1 columns of logits, and the last one predicts the column after.
With cross-attention the prefix is a single learned start vector and the text is the memory.

Text is left-padded, so the last text position is always real. A caption with no real position
(empty, or dropped for classifier-free guidance) becomes a one-position prefix holding a learned
null embedding: the model's null condition, which CFG's unconditional branch uses too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmttm.backbones import MIXERS, BackboneConfig, BatchState, Context, StackState, build_backbone, mixer_spec
from ssmttm.beat_clock import FEATURES, clock_features
from ssmttm.conditioning import Conditioning
from ssmttm.config import ConfigError
from ssmttm.ops.linear import linear
from ssmttm.patterns import CodebookPattern, make_pattern


@dataclass
class LMConfig:
    """The music language model: codebook streams, text conditioning, positions, loss."""

    num_codebooks: int = 4
    cardinality: int = 1024  # codebook size; the special (pad/start) id equals it
    text_dim: int = 768  # width of the text encoder's embeddings
    pattern: Literal["delay", "parallel"] = "delay"
    conditioning: Literal["prefix", "cross"] = "prefix"
    # "none": the recurrence carries order (SSM default). "sinusoidal": the release's absolute
    # embedding over [text; audio]. "rope": rotary, inside self-attention (transformer default).
    positions: Literal["none", "sinusoidal", "rope"] = "none"
    # "apply": masked text positions are absent. "ignore": the release's behaviour (docs/release.md).
    text_mask: Literal["apply", "ignore"] = "apply"
    label_smoothing: float = 0.1
    caption_dropout: float = 0.1  # classifier-free guidance: drop the whole caption
    token_dropout: float = 0.1  # and single text tokens
    # A metronome input (beat_clock.py): every frame gets its place in the beat of the tempo the
    # caption states. Off in the release's layout and in models trained before it existed.
    beat_clock: bool = False
    backbone: BackboneConfig = field(default_factory=BackboneConfig)

    def __post_init__(self) -> None:
        if self.positions == "rope" and not mixer_spec(self.backbone.kind).rotary:
            rotary = ", ".join(kind for kind, spec in MIXERS.items() if spec.rotary)
            raise ConfigError(f"positions: rope needs self-attention; use it with backbone.kind {rotary}")
        if self.num_codebooks < 1 or self.cardinality < 1:
            raise ConfigError("num_codebooks and cardinality must be positive")

    @property
    def vocab_size(self) -> int:
        return self.cardinality + 1

    @property
    def special_token(self) -> int:
        return self.cardinality


def sinusoidal_positions(positions: Tensor, dim: int) -> Tensor:
    """The release's absolute embedding: cos half then sin half, phase = pos / 1e4^(i / (dim/2 - 1))."""
    half = dim // 2
    exponent = torch.arange(half, device=positions.device, dtype=torch.float32) / max(half - 1, 1)
    phase = positions.to(torch.float32)[:, None] / 10000.0**exponent
    return torch.cat([phase.cos(), phase.sin()], dim=-1)  # (T, dim)


@dataclass
class LMState(BatchState):
    backbone: StackState
    # Each an int, or a 0-d tensor on the model's device, which a CUDA graph can advance on its own.
    position: int | Tensor  # absolute position of the next input, for sinusoidal embeddings
    clock: Tensor | None = None  # (B, 2) the beat clock of each row (beat_clock.py), NaN where silent
    column: int | Tensor = 0  # pattern column of the next input, for the clock


@dataclass
class LossOutput:
    loss: Tensor  # scalar: per-codebook cross-entropies summed, as in the release
    per_codebook: Tensor  # (K,) mean cross-entropy over each codebook's real targets
    num_tokens: Tensor  # (K,) how many real targets each codebook had


class MusicLM(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.backbone.d_model
        self.pattern: CodebookPattern = make_pattern(cfg.pattern, cfg.num_codebooks, cfg.special_token)
        self.text_proj = nn.Linear(cfg.text_dim, d)
        self.text_norm = nn.LayerNorm(d, eps=1e-5)
        self.null_embedding = nn.Parameter(torch.randn(d))
        self.start = nn.Parameter(torch.randn(d)) if cfg.conditioning == "cross" else None
        self.embeddings = nn.ModuleList(nn.Embedding(cfg.vocab_size, d) for _ in range(cfg.num_codebooks))
        self.backbone = build_backbone(
            cfg.backbone, cross_attention=cfg.conditioning == "cross", rope=cfg.positions == "rope"
        )
        self.heads = nn.ModuleList(nn.Linear(d, cfg.vocab_size, bias=False) for _ in range(cfg.num_codebooks))
        self.clock = nn.Linear(FEATURES, d, bias=False) if cfg.beat_clock else None
        if self.clock is not None:  # starts silent, so a trained model fine-tuned with a clock starts where it was
            nn.init.zeros_(self.clock.weight)

    # -- training path ---------------------------------------------------------------------------

    def forward(self, seq: Tensor, cond: Conditioning) -> Tensor:
        """seq (B, K, T) pattern sequence, conditioned on `cond`'s B rows (its clock is read only
        by models with `beat_clock`).

        Returns logits (B, K, T + 1, V): column i predicts seq[:, :, i].
        """
        x, ctx, prefix_len, _ = self._inputs(seq, cond)
        h = self.backbone(x, ctx)
        return self._logits(h[:, prefix_len - 1 :])

    def compute_loss(self, codes: Tensor, cond: Conditioning, label_smoothing: float | None = None) -> LossOutput:
        """Teacher-forced loss on codec frames (B, K, T); frames holding the special id are padding."""
        seq = self.pattern.build(codes)
        logits = self(seq[..., :-1], cond)
        return self.loss(logits, seq, self.pattern.valid_mask(codes.shape[-1], device=codes.device), label_smoothing)

    def loss(
        self, logits: Tensor, targets: Tensor, valid: Tensor | None = None, label_smoothing: float | None = None
    ) -> LossOutput:
        """logits (B, K, S, V), targets (B, K, S).

        Targets holding the special id, or outside the pattern's `valid` (K, S), are skipped.
        `label_smoothing` defaults to the config's; validation passes 0 for the plain cross-entropy.
        """
        ignore = targets == self.cfg.special_token
        if valid is not None:
            ignore = ignore | ~valid
        targets = targets.masked_fill(ignore, -100)
        token_loss = F.cross_entropy(
            logits.flatten(0, 2),
            targets.flatten(),
            ignore_index=-100,
            label_smoothing=self.cfg.label_smoothing if label_smoothing is None else label_smoothing,
            reduction="none",
        )
        counts = (~ignore).sum(dim=(0, 2))
        per_codebook = token_loss.view_as(targets).sum(dim=(0, 2)) / counts.clamp(min=1)
        return LossOutput(per_codebook.sum(), per_codebook, counts)

    # -- decoding path ---------------------------------------------------------------------------

    def prefill(self, cond: Conditioning, seq: Tensor | None = None) -> tuple[Tensor, LMState]:
        """Run the conditions (and optionally the first columns of a sequence (R, K, S)) in parallel,
        every row of `cond` alike.

        Returns the logits of the next column (R, K, V) and the state to `step` from.
        """
        x, ctx, prefix_len, clock = self._inputs(seq, cond)
        h, state = self.backbone.prefill(x, ctx)
        return self._logits(h[:, -1]), LMState(state, x.shape[1], clock, x.shape[1] - prefix_len)

    def step(self, tokens: Tensor, state: LMState) -> tuple[Tensor, LMState]:
        """Feed one column (B, K) of the sequence; returns the next column's logits (B, K, V)."""
        x = self._embed(tokens[..., None])[:, 0]
        if self.cfg.positions == "sinusoidal":
            x = x + sinusoidal_positions(torch.as_tensor(state.position, device=x.device).reshape(1), x.shape[-1])
        if self.clock is not None and state.clock is not None:
            if state.clock.shape[0] != x.shape[0]:  # the sum would broadcast one row over the other's batch
                raise ValueError(
                    f"decoding step: {x.shape[0]} token rows on a state whose beat clock has {state.clock.shape[0]}"
                )
            x = x + self._clock_input(state.clock, state.column, 1)[:, 0]
        h, backbone_state = self.backbone.step(x, state.backbone)
        return self._logits(h), LMState(backbone_state, state.position + 1, state.clock, state.column + 1)

    # -- pieces ----------------------------------------------------------------------------------

    def _embed(self, seq: Tensor) -> Tensor:
        """seq (B, K, T) -> (B, T, D): one table per codebook, summed."""
        return sum(emb(seq[:, k]) for k, emb in enumerate(self.embeddings))  # type: ignore[return-value]

    def _logits(self, h: Tensor) -> Tensor:
        """h (B, T, D) -> (B, K, T, V), or h (B, D) -> (B, K, V): one bias-free head per codebook."""
        return torch.stack([linear(h, head) for head in self.heads], dim=1)

    def _clock_input(self, clock: Tensor, first: int | Tensor, count: int) -> Tensor:
        """(B, count, D): the clock's input to pattern columns first .. first + count - 1."""
        columns = first + torch.arange(count, device=clock.device)
        return linear(clock_features(clock, columns), self.clock)

    def _inputs(self, seq: Tensor | None, conditioning: Conditioning) -> tuple[Tensor, Context, int, Tensor | None]:
        """The backbone's input sequence, its context, the prefix length, and the clock as used: the
        null condition's rows (no caption, or a caption dropped in training) hear no clock."""
        clock = conditioning.clock
        cond, cond_mask, null_rows = self._condition(conditioning.text, conditioning.mask)
        batch = cond.shape[0]
        if self.start is None:
            prefix, prefix_mask, ctx = cond, cond_mask, Context()
        else:
            prefix, prefix_mask = self.start.expand(batch, 1, -1), None
            ctx = Context(memory=cond, memory_mask=cond_mask)
        x = prefix if seq is None or seq.shape[-1] == 0 else torch.cat([prefix, self._embed(seq)], dim=1)
        if prefix_mask is not None:
            ctx.mask = F.pad(prefix_mask, (0, x.shape[1] - prefix.shape[1]), value=True)
        if self.cfg.positions == "sinusoidal":
            x = x + sinusoidal_positions(torch.arange(x.shape[1], device=x.device), x.shape[-1])
        if self.clock is None or clock is None:
            return x, ctx, prefix.shape[1], None
        clock = clock.to(x.device, torch.float64).masked_fill(null_rows[:, None], float("nan"))
        columns = x.shape[1] - prefix.shape[1]
        if columns:
            x = torch.cat([x[:, : prefix.shape[1]], x[:, prefix.shape[1] :] + self._clock_input(clock, 0, columns)], 1)
        return x, ctx, prefix.shape[1], clock

    def _condition(self, text: Tensor, text_mask: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor]:
        """Projected, normalised text (B, L', D), its mask (None when nothing is masked), and which
        rows are the null condition (B,)."""
        batch, length, _ = text.shape
        mask = torch.ones(batch, length, dtype=torch.bool, device=text.device) if text_mask is None else text_mask
        if length == 0:  # an empty caption: one masked slot that becomes the null embedding
            text, mask = F.pad(text, (0, 0, 1, 0)), F.pad(mask, (1, 0), value=False)
        mask = self._guidance_dropout(mask.bool())
        emb = self.text_norm(linear(text, self.text_proj))
        null_rows = ~mask.any(dim=-1)  # (B,)
        null_slot = F.pad(null_rows[:, None], (emb.shape[1] - 1, 0), value=False)  # last position of null rows
        emb = torch.where(null_slot[..., None], self.null_embedding.to(emb.dtype), emb)
        if self.cfg.text_mask == "ignore":  # the release: every text position feeds the model
            return torch.where((null_rows[:, None] & ~null_slot)[..., None], 0.0, emb), None, null_rows
        mask = mask | null_slot
        emb = emb * mask[..., None]  # masked positions give zero input
        return emb, None if bool(mask.all()) else mask, null_rows

    def _guidance_dropout(self, mask: Tensor) -> Tensor:
        """Classifier-free guidance training: drop whole captions and single text tokens."""
        if not self.training:
            return mask
        cfg = self.cfg
        keep = torch.rand(mask.shape[0], 1, device=mask.device) >= cfg.caption_dropout
        if cfg.text_mask == "apply" and cfg.token_dropout > 0:
            tokens = torch.rand(mask.shape, device=mask.device) >= cfg.token_dropout
            tokens[:, -1] = True  # the last position, where logits are read, stays real
            keep = keep & tokens
        return mask & keep


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_parameters(cfg: LMConfig) -> int:
    """Trainable parameters of the LM a config describes (text encoder excluded), without allocating it."""
    with torch.device("meta"):
        return num_parameters(MusicLM(cfg))

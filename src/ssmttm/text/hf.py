"""Encoders built from a `transformers` model and tokenizer, loaded from a folder or the hub."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ssmttm.hub import cached_config, first_line, how_to_provide, is_local_path, offline, quiet_loading
from ssmttm.text.base import TextEncoder, TextEncoderError, Tokens

# Tokenizers that declare no real limit (ByT5's is 1e30) fall back to this.
DEFAULT_MAX_LENGTH = 512

log = logging.getLogger(__name__)


class TransformersEncoder(TextEncoder):
    """Last hidden state of a `transformers` encoder (T5 encoder, BERT), per token."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        kind: str,
        name: str,
        max_length: int | None = None,
        device: str | torch.device = "cpu",
        weights: str | None = None,
    ) -> None:
        """`name` is what `load_text_encoder` accepts; `weights` (default: `name`) names them in the id."""
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        # Right padding keeps every token at its own absolute position (BERT's embeddings depend on
        # it), so a caption's embedding does not depend on its batch mates.
        self.tokenizer.padding_side = "right"
        self.dim = int(model.config.hidden_size)
        self.max_length = max_length or _declared_max_length(tokenizer)
        self.num_special = int(tokenizer.num_special_tokens_to_add())
        if self.max_length <= self.num_special:
            raise TextEncoderError(f"max_length {self.max_length} leaves no room for text in {name}")
        self.name = name
        self.id = f"{kind}:{weights or name}?max_length={self.max_length}"
        self.to(device)

    def to(self, device: str | torch.device) -> TransformersEncoder:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def tokenize(self, texts: list[str]) -> Tokens:
        if isinstance(texts, str):
            raise TextEncoderError("tokenize expects a list of captions, got a single string")
        content = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        self._warn_truncated(texts, [len(ids) for ids in content])
        keep = [i for i, ids in enumerate(content) if ids]  # an empty caption gets no special tokens either
        width = 0
        if keep:
            batch = self.tokenizer(
                [texts[i] for i in keep], truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
            )
            width = batch["input_ids"].shape[1]
        ids = torch.full((len(texts), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(texts), width, dtype=torch.bool)
        if keep:
            ids[keep], mask[keep] = batch["input_ids"], batch["attention_mask"].bool()
        return Tokens(ids, mask)

    def _warn_truncated(self, texts: list[str], content_lengths: list[int]) -> None:
        # A log line rather than warnings.warn: that prints two lines, one of them our source code.
        for text, length in zip(texts, content_lengths, strict=True):
            dropped = length + self.num_special - self.max_length
            if dropped > 0:
                log.warning(
                    "text truncated to %d tokens, the limit of %s: dropped %d tokens of %r...",
                    self.max_length,
                    self.name,
                    dropped,
                    text[:60],
                )

    def _forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state


def load_hf_text_model(model_class: Any, source: str) -> tuple[Any, Any]:
    """(model, tokenizer) from a local folder or a hub id, or one TextEncoderError line saying how to get it."""
    from transformers import AutoTokenizer

    check_available(source)
    try:
        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(source)
            # float() rather than a dtype argument: its name changed across transformers versions
            model = model_class.from_pretrained(source).float()
    except (OSError, ValueError) as err:
        raise TextEncoderError(f"cannot load text encoder {source!r}: {first_line(err)}") from None
    return model, tokenizer


def check_available(source: str) -> None:
    """Fail fast (before transformers retries or imports) on a missing folder or an uncached offline hub id."""
    if is_local_path(source):
        path = Path(source).expanduser()
        if not (path / "config.json").is_file():
            what = "has no config.json" if path.is_dir() else "does not exist"
            raise TextEncoderError(f"text encoder folder {path} {what}: pass a folder saved with save_pretrained")
        return
    if offline() and cached_config(source) is None:
        raise TextEncoderError(
            f"text encoder {source!r} is not in the Hugging Face cache and HF_HUB_OFFLINE=1: {how_to_provide(source)}"
        )


def _declared_max_length(tokenizer: Any) -> int:
    declared = int(min(tokenizer.model_max_length, 10**9))
    return declared if declared < 10**6 else DEFAULT_MAX_LENGTH

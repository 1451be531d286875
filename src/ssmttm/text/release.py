"""The release's text path (paper-notes, "Inference text path"), for the authors' checkpoints.

    captions  ["jazz", ""]  ->  T5 tokenizer, right-padded to the batch's longest (pad id 0, mask 0)
              -> if shorter than 60: id 1 appended on the right up to 60, mask 0
              -> T5 encoder, with that attention mask
              -> every position's output, padded ones included: (B, max(60, longest), 768)

The LM takes all of them as its prefix and ignores the mask (`text_mask: ignore`); that is how the
authors' models were trained and sampled, so imported models are run this way. The empty caption
(CFG's unconditional branch) is T5's </s> alone, padded the same way in the same batch. Because
padded positions feed the model, a caption's embedding depends on the batch's longest caption,
which is why our own models use left padding with the mask applied instead (text/base.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmttm.text.base import TextEncoderError, Tokens
from ssmttm.text.t5 import T5Encoder

RELEASE_LENGTH = 60  # the release pads every batch to at least this many tokens
FILL_ID = 1  # what it appends up to that length: the literal id 1 (T5's </s>), with mask 0


class ReleaseT5Encoder(T5Encoder):
    """A T5 encoder that tokenizes and encodes as the authors' inference did."""

    kind = "t5-release"  # its own cache id: the outputs differ from T5Encoder's
    padding = "release"

    def tokenize(self, texts: list[str]) -> Tokens:
        """Captions -> Tokens (B, max(60, longest)): right-padded with 0, then filled with id 1; mask 0 on both."""
        if isinstance(texts, str):
            raise TextEncoderError("tokenize expects a list of captions, got a single string")
        content = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        self._warn_truncated(texts, [len(ids) for ids in content])
        batch = self.tokenizer(
            list(texts), truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
        )
        ids, mask = batch["input_ids"], batch["attention_mask"].bool()  # (B, S); "" is </s> alone
        fill = max(0, RELEASE_LENGTH - ids.shape[1])
        return Tokens(F.pad(ids, (0, fill), value=FILL_ID), F.pad(mask, (0, fill), value=False))

    def encode(self, tokens: Tokens) -> tuple[Tensor, Tensor]:
        """Tokens (B, S) -> every position's hidden state (B, S, dim) float32, and the mask (B, S)."""
        tokens = tokens.to(self.device)
        with torch.no_grad():
            hidden = self._forward(tokens.ids, tokens.mask).float()  # (B, S, dim)
        return hidden, tokens.mask

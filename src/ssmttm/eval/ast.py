"""An AudioSet tagger for KL: the Audio Spectrogram Transformer through `transformers`
(`ASTForAudioClassification`, `ASTFeatureExtractor`), 527 labels at 16 kHz.

Windows are the extractor's length, 1024 frames of 10 ms (10.24 s; 164,080 samples with the last
25 ms frame's tail), the last one ending at the clip's end; a shorter clip is one window, which the
extractor pads with silent frames. `embeddings` are the pooled hidden state the classifier reads
(the mean of the CLS and distillation tokens, 768-d), so AST can serve FD too.
"""

from __future__ import annotations

import numpy as np
import torch

from ssmttm.eval.models import from_pretrained, resolve_source, source_name, windows

AST_AUDIOSET = "MIT/ast-finetuned-audioset-10-10-0.4593"
FRAME, HOP = 0.025, 0.010  # seconds: the extractor's fbank frames, fixed by Kaldi's defaults


class AstTagger:
    """AST's AudioSet logits per window, and the pooled state beneath them as embeddings."""

    batch_size = 8  # windows per forward pass

    def __init__(self, source: str = AST_AUDIOSET, device: str | torch.device = "cpu") -> None:
        source = resolve_source(source, "AST model")
        from transformers import ASTFeatureExtractor, ASTForAudioClassification

        model, self.extractor = from_pretrained((ASTForAudioClassification, ASTFeatureExtractor), source, "AST")
        self.model = model.float().eval().requires_grad_(False).to(device)
        self.device = torch.device(device)
        self.sample_rate = int(self.extractor.sampling_rate)
        frames = int(self.extractor.max_length)
        self.window = round((FRAME + HOP * (frames - 1)) * self.sample_rate)  # samples that fill `frames`
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.id = f"ast-{source_name(source)}"

    def embeddings(self, wav: np.ndarray) -> np.ndarray:
        """Mono audio (N,) at `sample_rate` -> (windows, hidden) float32."""
        return self._forward(wav)[0]

    def logits(self, wav: np.ndarray) -> np.ndarray:
        """Mono audio (N,) at `sample_rate` -> (windows, labels): pre-sigmoid AudioSet scores."""
        return self._forward(wav)[1]

    @torch.no_grad()
    def _forward(self, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = windows(np.asarray(wav, dtype=np.float32), self.window)
        pooled, logits = [], []
        for i in range(0, len(parts), self.batch_size):
            batch = parts[i : i + self.batch_size]
            features = self.extractor(batch, sampling_rate=self.sample_rate, return_tensors="pt")
            inputs = features["input_values"].float().to(self.device)  # (B, frames, mels)
            state = self.model.audio_spectrogram_transformer(inputs).pooler_output  # (B, hidden)
            pooled.append(state)
            logits.append(self.model.classifier(state))  # (B, labels)
        return torch.cat(pooled).float().cpu().numpy(), torch.cat(logits).float().cpu().numpy()

"""VGGish (`torchvggish`) for FAD_vgg, the Fréchet audio distance most often quoted, from weights on disk.

The network is torchvggish's `VGG`, built without its weights (`_vgg(postprocess=False)`: torchvggish's
`vggish()` and `Postprocessor` fetch them from GitHub with `torch.hub`, which is never called here),
then given the state dict read from a local file with `torch.load(weights_only=True)`.

The embedding is the one FAD uses (Google's `frechet_audio_distance`, whose `vggish_slim` ends in a
linear layer, and fadtk, AudioCraft's and `frechet_audio_distance`'s ports of torchvggish): the
128-d output of the last fully connected layer, without torchvggish's final ReLU and without the
PCA, whitening and 8-bit quantisation of AudioSet's released features. So the PCA parameters file
is not needed.

Front end, VGGish's own (`torchvggish.mel_features`, as `vggish_input.waveform_to_examples`): 16 kHz
mono, 25 ms Hann windows every 10 ms (FFT of 512), 64 mel bands from 125 Hz to 7.5 kHz,
`log(mel + 0.01)`, framed into non-overlapping examples of 96 frames (0.96 s): 3 s give 3. A clip
shorter than one example is padded with silence to one. Clips at other rates are resampled by the
caller (with soxr, `ssmttm.audio.resample`), never with resampy.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ssmttm.eval.models import ModelError
from ssmttm.hub import first_line

if TYPE_CHECKING:
    import torch

# Where torchvggish fetches its weights (its `VGGISH_WEIGHTS`), to download elsewhere. Its `PCA_PARAMS`
# (vggish_pca_params-970ea276.pth) are not read: FAD's embedding comes before the PCA.
VGGISH_WEIGHTS = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth"

SAMPLE_RATE = 16000
EXAMPLE_FRAMES = 96  # 0.96 s of 10 ms frames
WINDOW_SAMPLES = 400  # 25 ms
HOP_SAMPLES = 160  # 10 ms


def how_to_get() -> str:
    return (
        f"download {VGGISH_WEIGHTS} on a machine online (torchvggish's weights; it would fetch them"
        " from GitHub) and pass --embedding vggish:PATH"
    )


class VggishModel:
    """VGGish as a `ClipModel`: (examples, 128) embeddings of 0.96 s examples, for FD; not a tagger."""

    batch_size = 64  # examples per forward pass

    def __init__(self, source: str | None = None, device: str | torch.device = "cpu") -> None:
        if not source:
            raise ModelError(f"VGGish needs its weights as a local file: {how_to_get()}")
        path = Path(source).expanduser()
        if not path.is_file():
            state = "is a folder, not the weights file" if path.is_dir() else "does not exist"
            raise ModelError(f"VGGish weights {path} {state}: {how_to_get()}")
        import torch  # here, after the checks, so that a missing file is reported at once

        try:
            from torchvggish import mel_features, vggish_params
            from torchvggish.torchvggish import _vgg
        except ImportError as err:
            raise ModelError(
                f"VGGish needs torchvggish ({first_line(err)}): pip install --no-deps torchvggish==0.2 resampy"
            ) from None
        self._mel_features = mel_features
        self._params = vggish_params
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            network = _vgg(postprocess=False)  # builds the layers only: no torch.hub call
            network.load_state_dict(state)
        except Exception as err:  # a bad file is one line, whatever torch or pickle raises
            raise ModelError(f"cannot load VGGish weights from {path}: {first_line(err)}") from None
        network.embeddings[5] = torch.nn.Identity()  # FAD's embedding is before the last ReLU
        self.network = network.float().eval().requires_grad_(False).to(device)
        self.device = torch.device(device)
        self.sample_rate = SAMPLE_RATE
        self.id = f"vggish-{_digest(path)}"

    def examples(self, wav: np.ndarray) -> np.ndarray:
        """Mono audio (N,) at 16 kHz -> (examples, 96, 64) log-mel patches, as `waveform_to_examples`."""
        wav = np.asarray(wav, dtype=np.float64).reshape(-1)
        need = WINDOW_SAMPLES + (EXAMPLE_FRAMES - 1) * HOP_SAMPLES  # one example's samples
        if wav.shape[0] < need:
            wav = np.pad(wav, (0, need - wav.shape[0]))
        p = self._params
        log_mel = self._mel_features.log_mel_spectrogram(
            wav,
            audio_sample_rate=p.SAMPLE_RATE,
            log_offset=p.LOG_OFFSET,
            window_length_secs=p.STFT_WINDOW_LENGTH_SECONDS,
            hop_length_secs=p.STFT_HOP_LENGTH_SECONDS,
            num_mel_bins=p.NUM_MEL_BINS,
            lower_edge_hertz=p.MEL_MIN_HZ,
            upper_edge_hertz=p.MEL_MAX_HZ,
        )
        return self._mel_features.frame(log_mel, window_length=EXAMPLE_FRAMES, hop_length=EXAMPLE_FRAMES)

    def embeddings(self, wav: np.ndarray) -> np.ndarray:
        """Mono audio (N,) at 16 kHz -> (examples, 128) float32."""
        import torch

        x = torch.from_numpy(self.examples(wav)).float()[:, None]  # (E, 1, 96, 64)
        with torch.no_grad():
            out = [
                self.network(x[i : i + self.batch_size].to(self.device)).reshape(-1, 128)
                for i in range(0, len(x), self.batch_size)
            ]
        return torch.cat(out).cpu().numpy()

    def logits(self, wav: np.ndarray) -> np.ndarray:
        raise ModelError("VGGish is not a tagger: use it as the embedding (FAD_vgg), and a tagger for KL")


def _digest(path: Path) -> str:
    """The weights file's SHA-256, first 12 hex digits: the model's id, so a cache tells weights apart."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:12]

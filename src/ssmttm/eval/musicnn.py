"""musicnn's pretrained music taggers (Pons and Serra, 2019) in PyTorch, on its own TF1 weights.

The network is ``build_musicnn`` of musicnn 0.1.0's ``models.py``, op for op: a batch-normalised
log-mel input; a front end of two timbral convolutions (7 frames by 38 and 67 mel bands, 204
filters each) and three temporal ones (128, 64 and 32 frames by one band, 51 filters each), each
conv -> ReLU -> batch norm -> max over frequency; a mid end of three 7-frame convolutions (64
filters) with residual connections, densely concatenated with the front end; a back end of max
and mean pooling over time, batch norm, a 200-unit dense layer (ReLU, batch norm: the penultimate
embedding) and the 50 tag logits. ``MTT_musicnn`` (MagnaTagATune) and ``MSD_musicnn`` (Million
Song Dataset) share this graph and differ in weights and tags.

The weights are read at run time from the installed ``musicnn`` package (``pip install --no-deps
musicnn``); none are copied here. The one deliberate difference from musicnn: its front end casts
the mel spectrogram to float16 before the log, which overflows to inf on loud tonal audio; this
one stays in float32.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssmttm.eval.tf_checkpoint import read_checkpoint

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 256
N_MELS = 96
PATCH_FRAMES = 187  # librosa.time_to_frames(3 s) + 1, as musicnn's extractor computes it
BN_EPS = 1e-3  # tf.compat.v1.layers.batch_normalization's default
MODELS = ("MTT_musicnn", "MSD_musicnn")

MTT_TAGS = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast", "piano",
    "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male", "singing",
    "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman", "male vocal", "no vocal", "pop",
    "soft", "sitar", "solo", "man", "classic", "choir", "voice", "new age", "dance", "male voice",
    "female vocal", "beats", "harp", "cello", "no voice", "weird", "country", "metal", "female voice", "choral",
)  # fmt: skip
MSD_TAGS = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s", "alternative rock",
    "jazz", "beautiful", "metal", "chillout", "male vocalists", "classic rock", "soul", "indie rock", "Mellow",
    "electronica", "80s", "folk", "90s", "chill", "instrumental", "punk", "oldies", "blues", "hard rock", "ambient",
    "acoustic", "experimental", "female vocalist", "guitar", "Hip-Hop", "70s", "party", "country",
    "easy listening", "sexy", "catchy", "funk", "electro", "heavy metal", "Progressive rock", "60s", "rnb",
    "indie pop", "sad", "House", "happy",
)  # fmt: skip


class MusicnnNotInstalled(ValueError):
    """The ``musicnn`` package, which holds the weights, is not installed."""


def weights_prefix(model: str) -> Path:
    """The checkpoint prefix of ``model`` inside the installed musicnn package (its files are ``<dir>/.index``...)."""
    if model not in MODELS:
        raise ValueError(f"unknown musicnn model {model!r}; choose one of {', '.join(MODELS)}")
    spec = importlib.util.find_spec("musicnn")
    if spec is None or not spec.submodule_search_locations:
        raise MusicnnNotInstalled("musicnn's weights are needed: pip install --no-deps musicnn")
    return Path(next(iter(spec.submodule_search_locations))) / model


def log_mel(wav16k: np.ndarray) -> np.ndarray:
    """musicnn's input: ``log10(10000 mel + 1)`` of a 16 kHz mono signal ``(N,)``, in float32; ``(frames, 96)``."""
    import librosa

    mel = librosa.feature.melspectrogram(
        y=np.asarray(wav16k, dtype=np.float32), sr=SAMPLE_RATE, hop_length=HOP, n_fft=N_FFT, n_mels=N_MELS
    ).T  # (frames, 96)
    return np.log10(10000 * mel.astype(np.float32) + 1)


def patches(spec: np.ndarray, hop: int = PATCH_FRAMES) -> np.ndarray:
    """musicnn's ``batch_data``: windows of 187 frames every ``hop`` frames, a partial last one dropped.

    spec: (frames, 96) -> (windows, 187, 96).
    """
    if spec.shape[0] < PATCH_FRAMES:
        raise ValueError(f"musicnn needs at least 3 s of audio ({PATCH_FRAMES} frames), got {spec.shape[0]}")
    starts = range(0, spec.shape[0] - PATCH_FRAMES + 1, hop)
    return np.stack([spec[s : s + PATCH_FRAMES] for s in starts])


class BatchNorm(nn.Module):
    """TF's inference batch norm over the channel axis ``dim`` of any layout."""

    def __init__(self, channels: int, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            self.register_buffer(name, torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.dim()
        shape[self.dim] = -1
        scale = self.gamma * torch.rsqrt(self.moving_variance + BN_EPS)
        shift = self.beta - self.moving_mean * scale
        return x * scale.view(shape) + shift.view(shape)


class FrontEndBranch(nn.Module):
    """conv -> ReLU -> batch norm -> max over frequency; ``(B, 1, T + pad, F) -> (B, filters, T)``."""

    def __init__(self, filters: int, kernel: tuple[int, int], time_pad: tuple[int, int]) -> None:
        super().__init__()
        self.time_pad = time_pad
        self.conv = nn.Conv2d(1, filters, kernel)
        self.bn = BatchNorm(filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, *self.time_pad))  # (B, 1, T + k - 1, F)
        x = self.bn(F.relu(self.conv(x)))  # (B, filters, T, F')
        return x.amax(dim=3)  # (B, filters, T)


class MidEndLayer(nn.Module):
    """A 7-frame convolution over all channels: pad 3 -> conv -> ReLU -> batch norm; ``(B, C, T) -> (B, 64, T)``."""

    def __init__(self, channels: int, filters: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, filters, 7)
        self.bn = BatchNorm(filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(self.conv(F.pad(x, (3, 3)))))


@dataclass(frozen=True)
class MusicnnOutput:
    logits: torch.Tensor  # (B, 50)
    penultimate: torch.Tensor  # (B, 200)


class Musicnn(nn.Module):
    """``build_musicnn(num_filt_midend=64, num_units_backend=200)``: ``(B, 187, 96)`` log-mel patches in."""

    def __init__(self, num_classes: int = 50, midend: int = 64, backend: int = 200) -> None:
        super().__init__()
        self.input_bn = BatchNorm(1)
        # TF's "same" padding of an even kernel k puts (k - 1) // 2 frames before and the rest after.
        self.frontend = nn.ModuleList(
            [
                FrontEndBranch(204, (7, 38), (3, 3)),
                FrontEndBranch(204, (7, 67), (3, 3)),
                FrontEndBranch(51, (128, 1), (63, 64)),
                FrontEndBranch(51, (64, 1), (31, 32)),
                FrontEndBranch(51, (32, 1), (15, 16)),
            ]
        )
        front = 2 * 204 + 3 * 51  # 561
        self.midend = nn.ModuleList(
            [MidEndLayer(front, midend), MidEndLayer(midend, midend), MidEndLayer(midend, midend)]
        )
        pooled = 2 * (front + 3 * midend)  # 1506
        self.pool_bn = BatchNorm(pooled)
        self.dense = nn.Linear(pooled, backend)
        self.dense_bn = BatchNorm(backend)
        self.head = nn.Linear(backend, num_classes)

    def forward(self, x: torch.Tensor) -> MusicnnOutput:
        x = self.input_bn(x.unsqueeze(1))  # (B, 1, T, 96)
        front = torch.cat([branch(x) for branch in self.frontend], dim=1)  # (B, 561, T)
        c1 = self.midend[0](front)  # (B, 64, T)
        c2 = self.midend[1](c1) + c1
        c3 = self.midend[2](c2) + c2
        h = torch.cat([front, c1, c2, c3], dim=1)  # (B, 753, T)
        # TF concatenates max and mean on a trailing axis, then flattens: the features interleave.
        pooled = torch.stack([h.amax(dim=2), h.mean(dim=2)], dim=2).flatten(1)  # (B, 1506)
        penultimate = self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))  # (B, 200)
        return MusicnnOutput(logits=self.head(penultimate), penultimate=penultimate)

    def load_tf(self, tensors: dict[str, np.ndarray]) -> None:
        """Copy a musicnn checkpoint's tensors in, by TF's creation-order layer names."""
        bns = [self.input_bn]
        convs: list[nn.Conv1d | nn.Conv2d] = []
        for branch in self.frontend:
            convs.append(branch.conv)
            bns.append(branch.bn)
        for layer in self.midend:
            convs.append(layer.conv)
            bns.append(layer.bn)
        bns += [self.pool_bn, self.dense_bn]

        def get(name: str) -> torch.Tensor:
            if name not in tensors:
                raise ValueError(f"musicnn checkpoint lacks {name}")
            return torch.from_numpy(np.ascontiguousarray(tensors[name]))

        def put(target: torch.Tensor, value: torch.Tensor, name: str) -> None:
            if target.shape != value.shape:
                raise ValueError(f"{name}: checkpoint shape {tuple(value.shape)}, model {tuple(target.shape)}")
            target.copy_(value)

        with torch.no_grad():
            for i, bn in enumerate(bns):
                prefix = "batch_normalization" + (f"_{i}" if i else "")
                for field in ("gamma", "beta", "moving_mean", "moving_variance"):
                    put(getattr(bn, field), get(f"{prefix}/{field}"), f"{prefix}/{field}")
            for i, conv in enumerate(convs):
                name = "conv2d" + (f"_{i}" if i else "")
                kernel = get(f"{name}/kernel")  # (kh, kw, in, out)
                if isinstance(conv, nn.Conv1d):  # TF's (7, C, 1, out): the mel/channel axis is the width
                    kernel = kernel[:, :, 0, :].permute(2, 1, 0)  # (out, C, 7)
                else:
                    kernel = kernel.permute(3, 2, 0, 1)  # (out, in, kh, kw)
                put(conv.weight, kernel, f"{name}/kernel")
                put(conv.bias, get(f"{name}/bias"), f"{name}/bias")
            for linear, name in ((self.dense, "dense"), (self.head, "dense_1")):
                put(linear.weight, get(f"{name}/kernel").T, f"{name}/kernel")
                put(linear.bias, get(f"{name}/bias"), f"{name}/bias")


class MusicnnTagger:
    """A pretrained musicnn on 16 kHz mono audio: per-3-s-window tag probabilities and embeddings."""

    sample_rate = SAMPLE_RATE

    def __init__(self, net: Musicnn, tags: tuple[str, ...], device: str | torch.device = "cpu") -> None:
        self.net = net.eval().to(device)
        self.tags = tags
        self.device = torch.device(device)

    @classmethod
    def load(cls, model: str = "MTT_musicnn", device: str | torch.device = "cpu") -> MusicnnTagger:
        """``model``: ``"MTT_musicnn"`` or ``"MSD_musicnn"``, read from the installed musicnn package."""
        prefix = weights_prefix(model)
        net = Musicnn()
        net.load_tf(read_checkpoint(f"{prefix}/"))
        return cls(net, MTT_TAGS if model.startswith("MTT") else MSD_TAGS, device)

    @torch.no_grad()
    def __call__(self, wav16k: np.ndarray | torch.Tensor, hop_seconds: float | None = None) -> MusicnnOutput:
        """Run every window of ``wav16k`` ``(N,)``; windows start every ``hop_seconds`` (default: 3 s, no overlap)."""
        if isinstance(wav16k, torch.Tensor):
            wav16k = wav16k.detach().cpu().numpy()
        wav = np.asarray(wav16k, dtype=np.float32)
        if wav.ndim != 1:
            raise ValueError(f"expected mono audio (N,), got shape {wav.shape}")
        hop = PATCH_FRAMES
        if hop_seconds is not None:
            import librosa

            hop = int(librosa.time_to_frames(hop_seconds, sr=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP))
            if hop < 1:
                raise ValueError(f"hop_seconds {hop_seconds} is under one frame")
        x = torch.from_numpy(patches(log_mel(wav), hop)).to(self.device)  # (W, 187, 96)
        return self.net(x)

    def taggram(self, wav16k: np.ndarray | torch.Tensor, hop_seconds: float | None = None) -> np.ndarray:
        """Tag probabilities per window: ``(windows, 50)``, ordered as ``self.tags``."""
        return torch.sigmoid(self(wav16k, hop_seconds).logits).cpu().numpy()

    def embeddings(self, wav16k: np.ndarray | torch.Tensor, hop_seconds: float | None = None) -> np.ndarray:
        """The penultimate layer after its batch norm (musicnn's ``features['penultimate']``): ``(windows, 200)``."""
        return self(wav16k, hop_seconds).penultimate.cpu().numpy()

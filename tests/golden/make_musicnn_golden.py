"""Golden outputs of the real tensorflow musicnn, for the PyTorch port's parity test.

Writes ``tests/golden/musicnn.safetensors`` and ``tests/golden/musicnn.json``: three short
deterministic clips, the float32 log-mel patches fed to the net, and the taggram (sigmoid of the
logits, one row per patch) and the penultimate-layer embedding (musicnn's ``features['penultimate']``)
of ``MTT_musicnn`` and ``MSD_musicnn``, restored from the checkpoints shipped in the musicnn wheel.

Rerun it in a scratch venv outside the repository (never in the project's .venv)::

    python3 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install "tensorflow-cpu==2.21.*" "tf-keras==2.21.*" librosa numpy safetensors
    /tmp/tfvenv/bin/pip install --no-deps musicnn        # 0.1.0; its pinned deps are from 2019
    TF_USE_LEGACY_KERAS=1 /tmp/tfvenv/bin/python tests/golden/make_musicnn_golden.py

``TF_USE_LEGACY_KERAS=1`` makes ``tf.compat.v1.layers`` (which musicnn's graph uses) resolve to
tf-keras. The graph is musicnn's own ``models.define_model`` built as ``extractor.extractor`` builds it.

Why the front end is float32: musicnn's ``batch_data`` casts the mel power spectrogram to float16
and then computes ``np.log10(10000 * x + 1)`` in float16, so ``10000 * x`` overflows to inf as soon as
a mel bin exceeds 65504 / 10000 = 6.55, which loud tonal audio easily does (clips 0 and 2 here). The
net does not return NaN on those inf inputs: its taggram comes back finite but silently wrong (off by
up to 0.4 on clip 0). Where nothing overflows, float16 still rounds the log-mel by up to 2e-3, more
than the port's 1e-4 tolerance. So the goldens use musicnn's exact librosa call and batching with no
float16 cast. The penultimate golden is the ``penultimate`` tensor of every patch. musicnn 0.1.0's
``extractor(..., extract_features=True)`` has a bug there: for patches after the first it unpacks the
fetched value into ``backend_`` but concatenates ``penultimate_``, so its ``features['penultimate']``
repeats patch 0's embedding (``cnn1``-``cnn3`` likewise); its taggram is right.

The JSON records how far musicnn's own float16 path lands from these goldens.

The clips are fed as arrays: ``librosa.load(path, sr=16000)`` of a 16 kHz float WAV of them would
give the same samples (no resampling), which is the only thing musicnn's file loading adds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import librosa
import musicnn
import numpy as np
import tensorflow as tf
from musicnn import configuration as config
from musicnn import models
from safetensors.numpy import save_file

tf.compat.v1.disable_eager_execution()

HERE = Path(__file__).resolve().parent
SR = config.SR  # 16000
MODELS = ("MTT_musicnn", "MSD_musicnn")
INPUT_LENGTH_S = 3  # extractor's default input_length
# extractor's n_frames: librosa.time_to_frames(3, sr=16000, n_fft=512, hop_length=256) + 1 = 187
N_FRAMES = int(librosa.time_to_frames(INPUT_LENGTH_S, sr=SR, n_fft=config.FFT_SIZE, hop_length=config.FFT_HOP)) + 1
OVERLAP = N_FRAMES  # extractor's default input_overlap=False: the patch hop is n_frames (no overlap)


def make_clips() -> list[np.ndarray]:
    """Three deterministic float32 clips in [-1, 1] (short, to keep the golden file small)."""
    rng = np.random.default_rng(20240601)

    # 0: a loud sine chord (A major, with the octave), peak 0.99: musicnn's float16 path overflows on it.
    t = np.arange(int(3.2 * SR)) / SR
    chord = sum(np.sin(2 * np.pi * f * t + p) for f, p in ((220.0, 0.0), (277.18, 0.3), (329.63, 0.7), (440.0, 1.1)))
    chord = 0.99 * chord / np.abs(chord).max()

    # 1: seeded white noise under a rhythmic envelope whose tempo changes halfway (2 patches that differ).
    n = int(6.0 * SR)
    t = np.arange(n) / SR
    noise = rng.standard_normal(n)
    period = np.where(t < 3.0, 0.5, 0.2)  # 120 then 300 hits per minute
    phase = np.where(t < 3.0, t, t - 3.0) % period
    burst = 0.3 * noise * np.exp(-phase / 0.04)

    # 2: a short melody (harmonic notes with an attack/decay) over quiet noise.
    t = np.arange(int(3.2 * SR)) / SR
    notes = (261.63, 329.63, 392.0, 523.25, 440.0, 349.23, 293.66, 246.94)
    melody = np.zeros_like(t)
    note_len = 0.4
    for i, f in enumerate(notes):
        m = (t >= i * note_len) & (t < (i + 1) * note_len)
        tt = t[m] - i * note_len
        env = np.minimum(tt / 0.01, 1.0) * np.exp(-tt / 0.25)
        melody[m] = env * sum(np.sin(2 * np.pi * k * f * tt) / k for k in (1, 2, 3))
    melody = 0.6 * melody / np.abs(melody).max() + 0.02 * rng.standard_normal(t.size)
    melody = np.clip(melody, -1.0, 1.0)

    return [np.asarray(x, dtype=np.float32) for x in (chord, burst, melody)]


def mel_power(audio: np.ndarray) -> np.ndarray:
    """musicnn's librosa call in batch_data, (frames, 96) float32."""
    return librosa.feature.melspectrogram(
        y=audio, sr=SR, hop_length=config.FFT_HOP, n_fft=config.FFT_SIZE, n_mels=config.N_MELS
    ).T


def log_mel_float32(audio: np.ndarray) -> np.ndarray:
    return np.log10(10000 * mel_power(audio).astype(np.float32) + 1).astype(np.float32)


def log_mel_float16(audio: np.ndarray) -> np.ndarray:
    """musicnn's own path: cast to float16, then the log in float16."""
    audio_rep = mel_power(audio).astype(np.float16)
    with np.errstate(over="ignore"):
        return np.log10(10000 * audio_rep + 1)


def batch(audio_rep: np.ndarray, n_frames: int = N_FRAMES, overlap: int = OVERLAP) -> np.ndarray:
    """musicnn's batch_data after the spectrogram: patches of n_frames starting every `overlap` frames."""
    last_frame = audio_rep.shape[0] - n_frames + 1
    # C order: librosa's (mel, time) output transposed is Fortran-ordered, and np.stack keeps that
    # layout, which safetensors would then write in the wrong element order.
    return np.ascontiguousarray(np.stack([audio_rep[s : s + n_frames, :] for s in range(0, last_frame, overlap)]))


def run_model(model: str, batches: list[np.ndarray]) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict]:
    """Build the graph as extractor() does, restore the wheel's checkpoint, run one patch per call."""
    labels = config.MTT_LABELS if "MTT" in model else config.MSD_LABELS
    tf.compat.v1.reset_default_graph()
    with tf.name_scope("model"):
        x = tf.compat.v1.placeholder(tf.float32, [None, N_FRAMES, config.N_MELS])
        is_training = tf.compat.v1.placeholder(tf.bool)
        y, *_, penultimate = models.define_model(x, is_training, model, len(labels))
        normalized_y = tf.nn.sigmoid(y)
    sess = tf.compat.v1.Session()
    sess.run(tf.compat.v1.global_variables_initializer())
    saver = tf.compat.v1.train.Saver()
    saver.restore(sess, os.path.dirname(musicnn.__file__) + "/" + model + "/")  # raises if absent
    names = {
        "input": x.name,
        "is_training": is_training.name,
        "logits": y.name,
        "taggram": normalized_y.name,
        "penultimate": penultimate.name,
    }
    out = []
    for b in batches:
        rows = [
            sess.run([normalized_y, penultimate], feed_dict={x: b[i : i + config.BATCH_SIZE], is_training: False})
            for i in range(0, b.shape[0], config.BATCH_SIZE)
        ]
        out.append((np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])))
    sess.close()
    return out, {"labels": list(labels), "tensor_names": names}


def main() -> None:
    clips = make_clips()
    patches32 = [batch(log_mel_float32(a)) for a in clips]
    patches16 = [batch(log_mel_float16(a)).astype(np.float32) for a in clips]

    tensors: dict[str, np.ndarray] = {}
    for i, (a, p) in enumerate(zip(clips, patches32, strict=True)):
        tensors[f"audio_{i}"] = a
        tensors[f"patches_{i}"] = p

    meta: dict = {
        "produced_by": "tests/golden/make_musicnn_golden.py",
        "musicnn_version": "0.1.0 (PyPI wheel; musicnn has no __version__)",
        "tensorflow_version": tf.__version__,
        "librosa_version": librosa.__version__,
        "numpy_version": np.__version__,
        "front_end": {
            "sr": SR,
            "n_fft": config.FFT_SIZE,
            "hop_length": config.FFT_HOP,
            "n_mels": config.N_MELS,
            "melspectrogram": "librosa.feature.melspectrogram(y, sr, hop_length, n_fft, n_mels) defaults: "
            "power=2, center=True, window=hann, htk=False, norm='slaney', fmin=0, fmax=sr/2",
            "stft_pad_mode": "constant (librosa>=0.10 default; librosa<0.10, as in 2019, padded 'reflect')",
            "log": "log10(10000 * mel + 1), in float32 (musicnn casts mel to float16 first; not here)",
            "time_major": "patches are (patches, time=n_frames, mel=96), as musicnn feeds its placeholder",
        },
        "batching": {
            "input_length_s": INPUT_LENGTH_S,
            "n_frames": N_FRAMES,
            "input_overlap": False,
            "overlap_frames": OVERLAP,
            "rule": "starts = range(0, frames - n_frames + 1, overlap_frames); one patch per sess.run",
        },
        "clips": [
            {"name": "loud sine chord 220/277.18/329.63/440 Hz, peak 0.99", "seconds": 3.2},
            {"name": "seeded noise, 0.04 s decaying hits every 0.5 s then 0.2 s", "seconds": 6.0},
            {"name": "8-note harmonic melody over quiet noise", "seconds": 3.2},
        ],
        "penultimate_note": "bn_dense of musicnn's backend (after ReLU dense 200 and batch norm), every patch; "
        "musicnn 0.1.0's extractor returns patch 0's for all patches (a bug), so these differ from it after patch 0",
        "shapes": {},
        "models": {},
        "float16_path_vs_golden": {},
    }

    for model in MODELS:
        outs, info = run_model(model, patches32)
        outs16, _ = run_model(model, patches16)
        meta["models"][model] = info
        cmp = []
        for i, ((tg, pen), (tg16, pen16)) in enumerate(zip(outs, outs16, strict=True)):
            tensors[f"{model}.taggram_{i}"] = tg.astype(np.float32)
            tensors[f"{model}.penultimate_{i}"] = pen.astype(np.float32)
            finite16 = bool(np.isfinite(tg16).all())
            cmp.append(
                {
                    "patches_inf_count": int(np.isinf(patches16[i]).sum()),
                    "patches_max_abs_diff_where_finite": float(
                        np.abs(patches16[i] - patches32[i])[np.isfinite(patches16[i])].max()
                    ),
                    "taggram_finite": finite16,
                    "taggram_max_abs_diff": float(np.abs(tg16 - tg).max()) if finite16 else None,
                    "penultimate_max_abs_diff": float(np.abs(pen16 - pen).max()) if finite16 else None,
                }
            )
        meta["float16_path_vs_golden"][model] = cmp

    # sanity checks
    for k, v in tensors.items():
        assert np.isfinite(v).all(), k
        if ".taggram_" in k:
            assert v.min() >= 0.0 and v.max() <= 1.0, k
            assert v.shape[1] == 50, k
    for model in MODELS:
        tg = tensors[f"{model}.taggram_1"]
        assert tg.shape[0] >= 2 and np.abs(tg[0] - tg[1]).max() > 1e-3, f"{model}: patches give the same taggram"
        tags = [tensors[f"{model}.taggram_{i}"].mean(0) for i in range(3)]
        assert np.abs(tags[0] - tags[2]).max() > 1e-3, f"{model}: clips give the same taggram"

    meta["shapes"] = {k: list(v.shape) for k, v in tensors.items()}
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(HERE / "musicnn.safetensors"))
    (HERE / "musicnn.json").write_text(json.dumps(meta, indent=1) + "\n")
    for model in MODELS:
        labels = meta["models"][model]["labels"]
        for i in range(3):
            top = np.argsort(-tensors[f"{model}.taggram_{i}"].mean(0))[:3]
            print(model, i, [labels[j] for j in top])
    print(json.dumps(meta["float16_path_vs_golden"], indent=1))


if __name__ == "__main__":
    main()

"""How much of the music survives a codec round trip, on synthetic clips the codec was not fitted on.

    python benchmarks/codec_quality.py [--codec embedded] [--n 50] [--seed 500] [--workers 2]

Makes (or reuses) N synthetic clips with a corpus seed that neither fitting (seed 100) nor
development (seeds 200 and 300) used, round-trips each through the codec, and measures the original and the
copy the same way (ssmttm.codecs.quality):
- tempo: librosa's beat-tracker estimate, kept when within 3 BPM; target: 90% of clips;
- harmony: the top 3 pitch classes of the mean chroma, kept when equal as a set; target: 90%;
- the multi-resolution log-mel distance (lower is better).
For the embedded codec a second row decodes the unquantized features, which separates what the
signal model loses from what the codebooks lose. A last row measures the original plus faint
noise (-50 dBFS): how stable the measures themselves are. It also counts the originals whose 3rd
and 4th pitch classes are a near tie (within 2%), where the top-3 set hangs on any change at all.
Per-clip results go to a JSONL file beside the clips.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ssmttm import tune_allocator
from ssmttm.audio import load_audio, resample, to_mono
from ssmttm.codecs import load_codec
from ssmttm.codecs.quality import compare, mean_chroma, tempo_bpm
from ssmttm.codecs.spectral import SpectralCodec
from ssmttm.codecs.spectral.rvq import dequantize
from ssmttm.data.synth import synthesize_corpus
from ssmttm.files import write_jsonl

tune_allocator()  # as the CLI does: every figure here was measured with it (ssmttm/_allocator.py)

TARGET = 0.9
CLEAR_GAP = 0.02  # a top 3 whose 3rd and 4th pitch classes are closer than this is a near tie
_codec = None
_error_scales: list[float] = []


def _init(name: str, error_scales: list[float]) -> None:
    global _codec, _error_scales
    torch.set_num_threads(1)
    _codec = load_codec(name)
    _error_scales = error_scales


def _measure(path: str) -> dict:
    wav, rate = load_audio(path)
    mono = to_mono(wav)[0]  # (N,)
    codes = _codec.encode(torch.from_numpy(mono)[None, None], rate)
    decoded = _codec.decode(codes)[0].numpy()  # (1, T * hop) at the codec's rate
    before = (tempo_bpm(mono, rate), mean_chroma(mono, rate))  # the original, measured once
    result = compare(mono, resample(decoded, _codec.sample_rate, rate)[0], rate, before)
    row = {"file": Path(path).name, **_as_dict(result)}
    # The measures' own stability: the original with faint white noise (-50 dBFS), which leaves the music as it is.
    rng = np.random.default_rng(0)
    noisy = mono + np.float32(10 ** (-50 / 20)) * rng.standard_normal(len(mono)).astype(np.float32)
    row["reference"] = _as_dict(compare(mono, noisy, rate, before))
    if isinstance(_codec, SpectralCodec):  # its signal model alone, without the codebooks
        at_rate = resample(mono[None], rate, _codec.sample_rate)[0]
        at_rate = np.pad(at_rate, (0, -len(at_rate) % _codec.hop_length))
        features = _codec.features(torch.from_numpy(at_rate)[None, None])[0]  # (T, dim)
        resynthesized = _codec.model.synthesize(features).numpy()[None]
        unquantized = resample(resynthesized, _codec.sample_rate, rate)[0]
        row["unquantized"] = _as_dict(compare(mono, unquantized, rate, before))
        frames = min(features.shape[0], codes.shape[-1])
        dequantized = dequantize(codes[0, :, :frames].T, _codec.codebooks)  # (T, dim)
        for scale in _error_scales:
            closer = features[:frames] + scale * (dequantized - features[:frames])
            wav_scaled = resample(_codec.model.synthesize(closer).numpy()[None], _codec.sample_rate, rate)[0]
            row[f"error x{scale:g}"] = _as_dict(compare(mono, wav_scaled, rate, before))
    return row


def _as_dict(c) -> dict:
    return {
        "tempo_before": c.tempo_before,
        "tempo_after": c.tempo_after,
        "tempo_kept": c.tempo_kept,
        "pitch_classes_before": sorted(c.pitch_classes_before),
        "pitch_classes_after": sorted(c.pitch_classes_after),
        "harmony_kept": c.harmony_kept,
        "mel_distance": c.mel_distance,
        "gap_before": c.gap_before,
    }


def _summary(label: str, rows: list[dict]) -> tuple[str, bool]:
    tempo = np.mean([r["tempo_kept"] for r in rows])
    harmony = np.mean([r["harmony_kept"] for r in rows])
    mel = np.mean([r["mel_distance"] for r in rows])
    ok = tempo >= TARGET and harmony >= TARGET
    line = f"| {label} | {len(rows)} | {tempo:.0%} | {harmony:.0%} | {mel:.3f} |"
    return line, ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codec", default="embedded")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument(
        "--seed", type=int, default=500, help="corpus seed (100 fitted the codec, 200 and 300 tuned it)"
    )
    parser.add_argument("--sample-rate", type=int, default=22050, help="rate of the synthetic clips")
    parser.add_argument("--clips", default="benchmarks/.cache/codec-quality", help="where the clips are kept")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--error-scales",
        default="0.5,0.3",
        help="comma-separated: embedded codec only, also decode with the codebooks' error scaled by each ('' for none)",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    corpus = Path(args.clips) / f"seed{args.seed}-{args.sample_rate}"
    synthesize_corpus(corpus, n=args.n, seed=args.seed, workers=args.workers, sample_rate=args.sample_rate)
    meta = [json.loads(line) for line in (corpus / "metadata.jsonl").read_text().splitlines()][: args.n]
    paths = [str(corpus / m["file"]) for m in meta]
    start = time.perf_counter()
    scales = [float(v) for v in args.error_scales.split(",") if v.strip()]
    with ProcessPoolExecutor(args.workers, initializer=_init, initargs=(args.codec, scales)) as pool:
        rows = list(pool.map(_measure, paths))
    wall = time.perf_counter() - start
    write_jsonl(corpus / f"results-{args.codec.replace('/', '_')}.jsonl", rows)

    clips = f"{len(rows)} synthetic clips, corpus seed {args.seed}, {args.sample_rate} Hz"
    print(f"codec {args.codec}: {clips}, measured in {wall:.0f} s")
    print("| decoded from | clips | tempo within 3 BPM | same top-3 pitch classes | log-mel distance |")
    print("|---|---|---|---|---|")
    line, ok = _summary("codes (the codec)", rows)
    print(line)
    if "unquantized" in rows[0]:
        print(_summary("unquantized features", [r["unquantized"] for r in rows])[0])
        for scale in scales:
            label = f"codes, their error scaled by {scale:g}"
            print(_summary(label, [r[f"error x{scale:g}"] for r in rows])[0])
    print(_summary("the original + noise at -50 dBFS", [r["reference"] for r in rows])[0])
    clear = [r for r in rows if r["gap_before"] >= CLEAR_GAP]
    kept = np.mean([r["harmony_kept"] for r in clear]) if clear else float("nan")
    print(
        f"{len(rows) - len(clear)} of {len(rows)} originals have their 3rd and 4th pitch classes within "
        f"{CLEAR_GAP:.0%} of each other (a near tie); harmony kept on the other {len(clear)}: {kept:.0%}"
    )
    for m, r in zip(meta, rows, strict=True):
        if not (r["tempo_kept"] and r["harmony_kept"]):
            print(
                f"  missed: {r['file']} ({m['style']}, {m['lead']}): tempo {r['tempo_before']:.1f} -> "
                f"{r['tempo_after']:.1f}, pitch classes {r['pitch_classes_before']} -> {r['pitch_classes_after']} "
                f"(3rd/4th gap {r['gap_before']:.1%})"
            )
    print(f"targets (90% of clips for tempo and harmony): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

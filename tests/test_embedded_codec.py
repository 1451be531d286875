"""The embedded codec: its shipped weights, its signal model, its fitting, and what its round trip
keeps of music, on fixture clips (corpus seed 400) that fitting (seed 100) never saw."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ssmttm.audio import load_audio, save_audio
from ssmttm.cli import main
from ssmttm.codecs import CodecError, codec_device, load_codec
from ssmttm.codecs.quality import compare, third_fourth_gap
from ssmttm.codecs.spectral import EMBEDDED_WEIGHTS, SpectralCodec, SpectralConfig, SpectralModel
from ssmttm.codecs.spectral.fit import FitConfig, fit_spectral_codec

FIXTURES = Path(__file__).parent / "fixtures" / "codec"


@functools.cache
def embedded() -> SpectralCodec:
    return load_codec("embedded")


@functools.cache
def calibrated() -> SpectralModel:
    return SpectralModel.calibrate(SpectralConfig())


def fixture_clips() -> list[tuple[dict, np.ndarray, int]]:
    meta = [json.loads(line) for line in (FIXTURES / "metadata.jsonl").read_text().splitlines()]
    clips = []
    for m in meta:
        wav, rate = load_audio(FIXTURES / m["file"])
        clips.append((m, wav[0], rate))
    return clips


def test_the_shipped_codec_is_small_slow_enough_and_versioned():
    codec = embedded()
    assert (codec.sample_rate, codec.hop_length, codec.num_codebooks, codec.cardinality) == (22050, 512, 4, 1024)
    assert codec.frame_rate <= 50 and codec.num_codebooks <= 4
    assert EMBEDDED_WEIGHTS.stat().st_size < 4 * 2**20
    assert codec.codebooks.shape == (4, 1024, SpectralConfig().dim) and torch.isfinite(codec.codebooks).all()


@functools.cache
def round_trip(index: int):
    meta, wav, rate = fixture_clips()[index]
    codec = embedded()
    decoded = codec.decode(codec.encode(torch.from_numpy(wav)[None, None], rate))[0, 0].numpy()
    return meta, compare(wav, decoded, rate)  # the clips are at the codec's rate


@pytest.mark.parametrize("index", [0, 1, 2])
def test_round_trip_keeps_tempo_and_harmony_of_unseen_clips(index):
    """The issue's thresholds on 3 fixture clips: 90% of 3 is all 3. benchmarks/codec_quality.py
    measures the same on 50 clips, where the codec keeps the harmony of fewer than 90%."""
    meta, result = round_trip(index)
    assert abs(result.tempo_before - result.tempo_after) <= 3.0, (meta["file"], result)
    assert result.pitch_classes_before == result.pitch_classes_after, (meta["file"], result)
    assert result.mel_distance < 0.6


def test_the_gap_between_third_and_fourth_pitch_class_measures_a_near_tie():
    chroma = np.array([0.9, 0.1, 0.5, 0.2, 0.49, 0.3, 0.0, 0.8, 0.1, 0.2, 0.1, 0.3])  # 3rd 0.5, 4th 0.49
    assert third_fourth_gap(chroma) == pytest.approx(0.02)
    assert third_fourth_gap(np.roll(chroma, 5)) == pytest.approx(0.02)  # order does not matter
    result = round_trip(0)[1]
    assert 0.0 <= result.gap_before <= 1.0


def test_analysis_of_the_synthesis_gives_back_the_features():
    """Calibration is right: partials and noise bands synthesized from features analyse to the same
    features (loud partials within 1 dB), so the codec's only loss is its codebooks."""
    model = calibrated()
    cfg = model.config
    frames = 200
    feats = torch.zeros(frames, cfg.dim)
    chord = [45, 49, 52, 57]  # A3 C#4 E4 A4 above C1
    feats[:, chord] = torch.tensor([0.1, 0.05, 0.07, 0.03]) ** cfg.compression
    feats[:, cfg.num_semitones + 2] = 0.001**cfg.compression
    wav = model.synthesize(feats).numpy()
    back = torch.from_numpy(model.analyze(wav))[40:-40]  # away from the edges, where windows see silence
    db = lambda z: 20 / cfg.compression * torch.log10(z.clamp(min=1e-9))  # noqa: E731
    assert (db(back[:, chord]) - db(feats[40:-40, chord])).abs().max() < 1.0
    noise = cfg.num_semitones + 2  # random phases: its power fluctuates from frame to frame
    assert (db(back[:, noise]) - db(feats[40:-40, noise])).abs().max() < 3.0
    assert (db(back[:, noise]).mean() - db(feats[40:-40, noise]).mean()).abs() < 0.5


def test_a_sinusoid_lands_in_its_own_pitch_class():
    model = calibrated()
    rate = model.config.sample_rate
    t = np.arange(rate * 2) / rate
    wav = (0.2 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)[: 2 * rate // 512 * 512]
    amplitude = model.analyze(wav)[20:-20, : model.config.num_semitones] ** (1 / model.config.compression)
    a4 = 69 - model.config.fmin_midi
    assert np.all(amplitude.argmax(axis=1) == a4)
    assert np.allclose(amplitude[:, a4], 0.2, rtol=0.05)
    assert amplitude[:, [a4 - 1, a4 + 1]].max() < 0.02  # the neighbours sit on the filter's zero


def test_decoding_any_window_reproduces_the_whole_decode_there():
    """Phases come from absolute time, so a window that starts at frame s decodes, away from its
    edges, to exactly the samples of the whole decode: this is what chunks and streams rely on."""
    codec = embedded()
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, codec.cardinality, (1, 4, 120), generator=gen)
    whole = codec._decode(codes)
    hop, (left, right) = codec.hop_length, codec.decode_context
    start, stop = 37, 90
    part = codec._decode(codes[..., start - left : stop + right], start - left)
    expected = whole[..., start * hop : stop * hop]
    got = part[..., left * hop : (left + stop - start) * hop]
    assert torch.allclose(got, expected, atol=1e-6)
    shifted = codec._decode(codes[..., start - left : stop + right], start - left + 1)  # wrong phase
    assert not torch.allclose(shifted[..., left * hop : (left + stop - start) * hop], expected, atol=1e-3)


def test_fit_save_and_load_round_trip(tmp_path):
    _, wav, rate = fixture_clips()[0]
    corpus = tmp_path / "corpus"
    save_audio(corpus / "a.flac", wav[: 3 * rate], rate)
    save_audio(corpus / "sub" / "b.wav", np.stack([wav[rate:], wav[rate:]]), rate)  # stereo, nested
    out = tmp_path / "codec.safetensors"
    config = SpectralConfig(codebook_size=16)
    codec = fit_spectral_codec(corpus, out, config, FitConfig(max_frames=200, iterations=3))
    loaded = load_codec(str(out))
    assert torch.equal(loaded.codebooks, codec.codebooks) and loaded.model.config == config
    assert np.allclose(loaded.model.partial_gain, codec.model.partial_gain)
    clip = torch.from_numpy(wav[: 2 * rate])[None, None]
    codes = loaded.encode(clip, rate)
    assert codes.shape == (1, 4, math.ceil(2 * rate / 512)) and int(codes.max()) < 16
    assert torch.equal(load_codec(str(out), num_codebooks=2).encode(clip, rate), codes[:, :2])


def test_fit_command_takes_the_number_of_codebooks(tmp_path, capsys):
    """More residual codebooks extend the fit: the first 4 of 6 are the 4 a plain fit gives."""
    _, wav, rate = fixture_clips()[0]
    corpus = tmp_path / "corpus"
    save_audio(corpus / "a.flac", wav[: 3 * rate], rate)
    small = ["--codebook-size", "16", "--max-frames", "200", "--iterations", "3"]
    fit = ["codec", "fit", str(corpus), *small]
    assert main([*fit, "--out", str(tmp_path / "c4.safetensors")]) == 0
    assert main([*fit, "--out", str(tmp_path / "c6.safetensors"), "--codebooks", "6"]) == 0
    four, six = load_codec(str(tmp_path / "c4.safetensors")), load_codec(str(tmp_path / "c6.safetensors"))
    assert six.codebooks.shape == (6, 16, four.codebooks.shape[-1]) and six.model.config.num_codebooks == 6
    assert torch.equal(six.codebooks[:4], four.codebooks)
    capsys.readouterr()
    assert main(["codec", "fit", str(corpus), "--out", str(tmp_path / "c0.safetensors"), "--codebooks", "0"]) == 2
    assert "at least 1 codebook" in capsys.readouterr().err
    assert not (tmp_path / "c0.safetensors").exists()


def test_fit_and_load_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="no audio files"):
        fit_spectral_codec(tmp_path, tmp_path / "x.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(CodecError, match="not a spectral codec weights file"):
        load_codec(str(bad))
    with pytest.raises(CodecError, match="has 4 codebooks; cannot use 5"):
        load_codec("embedded", num_codebooks=5)
    with pytest.raises(CodecError, match="CPU only"):
        load_codec("embedded", device="cuda")
    from ssmttm.codecs.spectral.codec import EMBEDDED_WEIGHTS

    with pytest.raises(CodecError, match="CPU only"):
        load_codec(str(EMBEDDED_WEIGHTS), device="cuda")


def test_spectral_codecs_stay_on_the_cpu_when_the_lm_does_not():
    from ssmttm.codecs.spectral.codec import EMBEDDED_WEIGHTS

    assert codec_device("embedded", "cuda") == "cpu" and codec_device(str(EMBEDDED_WEIGHTS), "cuda:1") == "cpu"
    assert codec_device("descript/dac_44khz", "cuda:1") == "cuda:1" and codec_device("dac", "cpu") == "cpu"


def test_cli_round_trip_writes_audio_and_spectrograms(tmp_path, capsys):
    _, wav, rate = fixture_clips()[1]
    source = tmp_path / "in.wav"
    save_audio(source, np.stack([wav, wav])[:, : 2 * rate], rate)  # stereo in
    out, figure = tmp_path / "out.flac", tmp_path / "spec.png"
    assert main(["codec", "roundtrip", str(source), "-o", str(out), "--spectrogram", str(figure)]) == 0
    decoded, out_rate = load_audio(out)
    assert out_rate == 22050 and decoded.shape == (1, 2 * rate)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "real time" in capsys.readouterr().out


def test_cli_round_trip_errors_are_one_line(tmp_path, capsys):
    assert main(["codec", "roundtrip", str(tmp_path / "missing.wav"), "-o", str(tmp_path / "o.wav")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    assert main(["codec", "roundtrip", str(empty), "-o", str(tmp_path / "o.wav")]) == 2
    err = capsys.readouterr().err
    assert "empty file" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "o.wav").exists()

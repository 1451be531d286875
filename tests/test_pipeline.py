"""Text to music end to end on a tiny random model with the embedded codec and MiniLM: sampling
controls, streaming, continuation, long-form memory, and the CLI's outputs and one-line errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ssmttm.cli import main
from ssmttm.conditioning import Conditioning
from ssmttm.generation import SamplingConfig
from ssmttm.generation.pipeline import GenerationError, TextToMusic
from ssmttm.generation.sampling import sample
from ssmttm.lm import MusicLM
from ssmttm.patterns import StreamingRevert
from ssmttm.presets import load_preset
from ssmttm.pretrained import save_pretrained

TINY = [
    "backbone.d_model=32",
    "backbone.n_layers=2",
    "backbone.mlp_hidden=64",
    "backbone.mamba2.headdim=16",
    "backbone.mamba2.d_state=16",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    lm = MusicLM(load_preset("tiny-simba", TINY))  # 4 x 1024 codes, 384-d text: the embedded pair
    return save_pretrained(lm, tmp_path_factory.mktemp("model"), codec="embedded", text_encoder="minilm")


@pytest.fixture(scope="module")
def model(model_dir) -> TextToMusic:
    return TextToMusic.from_pretrained(model_dir)


def snr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    noise = (reference - other).pow(2).sum()
    return float(10 * torch.log10(reference.pow(2).sum() / noise.clamp(min=1e-30)))


# -- sampling controls (Generator level) -----------------------------------------------------------


def text(batch: int = 2, length: int = 5, dim: int = 384) -> torch.Tensor:
    return torch.randn(batch, length, dim, generator=torch.Generator().manual_seed(1))


def test_cfg_scale_zero_is_the_unconditional_model(model):
    generator, t = model.generator, text()
    guided = generator.generate(Conditioning(t), 20, sampling=SamplingConfig(temperature=1.0, cfg_scale=0.0), seed=5)
    null = generator.generate(
        Conditioning(t[:, :0]), 20, sampling=SamplingConfig(temperature=1.0, cfg_scale=1.0), seed=5
    )
    assert torch.equal(guided, null)


def test_cfg_scale_one_is_plain_conditional_sampling(model):
    lm, t = model.lm, text(batch=1)
    out = model.generator.generate(
        Conditioning(t), 12, sampling=SamplingConfig(temperature=1.0, cfg_scale=1.0, top_k=50), seed=3
    )
    rng = [torch.Generator().manual_seed(3)]
    seq = lm.pattern.build(torch.zeros(1, 4, 12, dtype=torch.long))[..., :1]  # column 0: all special
    valid = lm.pattern.valid_mask(12)
    with torch.no_grad():
        logits, state = lm.prefill(Conditioning(t), seq)
        columns = [seq[..., 0]]
        for s in range(1, valid.shape[1]):
            logits[..., lm.cfg.special_token] = -torch.inf
            tokens = torch.where(valid[:, s], sample(logits, 1.0, rng, top_k=50), lm.cfg.special_token)
            columns.append(tokens)
            logits, state = lm.step(tokens, state)
    assert torch.equal(out, lm.pattern.revert(torch.stack(columns, -1), 12))


def test_top_k_one_and_a_tiny_top_p_are_greedy(model):
    generator, t = model.generator, text()
    greedy = generator.generate(Conditioning(t), 15, sampling=SamplingConfig(temperature=0.0, cfg_scale=3.0))
    assert torch.equal(
        generator.generate(Conditioning(t), 15, sampling=SamplingConfig(temperature=1.5, top_k=1), seed=0), greedy
    )
    assert torch.equal(
        generator.generate(Conditioning(t), 15, sampling=SamplingConfig(temperature=1.5, top_p=1e-6), seed=0), greedy
    )
    assert not torch.equal(
        generator.generate(Conditioning(t), 15, sampling=SamplingConfig(temperature=1.5), seed=0), greedy
    )


def test_each_prompt_has_its_own_seed(model):
    generator, t = model.generator, text(batch=3)
    sampling = SamplingConfig(temperature=1.2, top_p=0.9)
    batch = generator.generate(Conditioning(t), 10, sampling=sampling, seed=7)
    alone = generator.generate(Conditioning(t[2:]), 10, sampling=sampling, seed=9)  # row 2 of seed 7 is seed 9
    assert torch.equal(batch[2:], alone)
    assert torch.equal(generator.generate(Conditioning(t), 10, sampling=sampling, seed=[7, 8, 9]), batch)


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    from ssmttm.generation.sampling import filter_logits

    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = filter_logits(logits, top_p=0.7).isfinite()
    assert kept.tolist() == [True, True, False, False]
    assert filter_logits(logits, top_k=3).isfinite().tolist() == [True, True, True, False]


# -- the pipeline ----------------------------------------------------------------------------------


def test_streamed_audio_and_tokens_equal_the_whole_generation(model, monkeypatch):
    whole = model.generate(["calm piano", "fast funk"], duration=3.0, seed=0)
    columns_done, first_chunk_at = [], []
    real_columns = model.generator.columns

    def counting(*args, **kwargs):
        for column in real_columns(*args, **kwargs):
            columns_done.append(column)
            yield column

    monkeypatch.setattr(model.generator, "columns", counting)
    chunks = []
    for chunk in model.stream(["calm piano", "fast funk"], duration=3.0, seed=0, chunk_seconds=0.5):
        first_chunk_at.append(len(columns_done))
        chunks.append(chunk)
    assert len(chunks) >= 3 and first_chunk_at[0] < len(columns_done)  # audio before the end
    joined = torch.cat(chunks, dim=-1)
    assert joined.shape == whole.shape and snr_db(whole, joined) >= 40
    revert = StreamingRevert(model.lm.pattern)
    streamed = torch.cat([revert.push(c) for c in columns_done], dim=-1)
    codes = model.generate_codes(["calm piano", "fast funk"], duration=3.0, seed=0)
    assert torch.equal(streamed, codes)


@pytest.mark.parametrize("preset", ["tiny-simba3", "tiny-mamba3"])
def test_a_mamba3_model_loads_generates_streams_and_continues(preset, tmp_path):
    """The Mamba-3 kinds through the same path: export, load, prefill then step; the stream is the
    whole generation, a continuation starts with its clip, and bf16 decodes too."""
    tiny = ["backbone.d_model=32", "backbone.n_layers=2", "backbone.mamba3.headdim=16", "backbone.mamba3.d_state=16"]
    torch.manual_seed(0)
    lm = MusicLM(load_preset(preset, [*tiny, *(["backbone.mlp_hidden=64"] if "simba" in preset else [])]))
    directory = save_pretrained(lm, tmp_path / "model", codec="embedded", text_encoder="minilm")
    model = TextToMusic.from_pretrained(directory)
    assert model.lm.cfg == lm.cfg
    prompts = ["calm piano", "fast funk"]
    whole = model.generate(prompts, duration=2.0, seed=0)
    streamed = torch.cat(list(model.stream(prompts, duration=2.0, seed=0, chunk_seconds=0.5)), dim=-1)
    assert streamed.shape == whole.shape and snr_db(whole, streamed) >= 40
    clip = whole[0, :, : model.sample_rate // 2].numpy()
    given = model.codec.encode(torch.from_numpy(clip)[None], model.sample_rate)
    continued = model.generate_codes(
        "a melody", duration=2.0, seed=0, continuation=clip, continuation_rate=model.sample_rate
    )
    assert torch.equal(continued[..., : given.shape[-1]], given)
    narrow = TextToMusic.from_pretrained(directory, precision="bf16")
    assert narrow.generator.state_dtype == torch.bfloat16
    assert narrow.generate(prompts, duration=1.0, seed=0).shape == (2, 1, model.sample_rate)


def test_continuation_starts_with_the_clip_and_depends_on_it(model):
    rate = model.sample_rate
    t = np.arange(int(1.0 * rate)) / rate
    clip_a = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)[None]
    clip_b = (0.3 * np.sin(2 * np.pi * 330 * t) * (t < 0.5)).astype(np.float32)[None]
    given = model.codec.encode(torch.from_numpy(clip_a)[None], rate)
    a = model.generate_codes("a melody", duration=3.0, seed=0, continuation=clip_a, continuation_rate=rate)
    b = model.generate_codes("a melody", duration=3.0, seed=0, continuation=clip_b, continuation_rate=rate)
    frames = given.shape[-1]
    assert torch.equal(a[..., :frames], given)
    assert not torch.equal(a[..., frames:], b[..., frames:])


def test_a_clip_that_leaves_nothing_to_generate_is_refused_with_its_length_in_samples(model):
    rate = model.sample_rate
    hop = model.codec.hop_length
    for samples, duration, what in [
        (rate, 1.0, "1 s, as long as the duration of 1 s"),  # 1 s in frames: 44 x 512 samples, 1.02 s
        (rate + hop, 1.0, f"{(rate + hop) / rate:g} s, longer than the duration of 1 s"),
        (rate - 10, 1.0, f"{(rate - 10) / rate:g} s, within a frame of the duration of 1 s"),
    ]:
        clip = np.full((1, samples), 0.1, np.float32)
        with pytest.raises(GenerationError) as err:
            model.generate_codes("more", duration, seed=0, continuation=clip, continuation_rate=rate)
        assert str(err.value) == f"the clip to continue is {what}, which counts the clip: ask for a longer duration"
    shorter = np.full((1, rate - hop), 0.1, np.float32)  # one frame short of the duration: one frame to make
    codes = model.generate_codes("more", 1.0, seed=0, continuation=shorter, continuation_rate=rate)
    assert codes.shape[-1] == model.num_frames(1.0)


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_a_streamed_file_grows_as_a_playable_wav_then_takes_its_name(model, tmp_path, monkeypatch, suffix):
    out = tmp_path / f"out{suffix}"
    partial = tmp_path / f"out{suffix}.partial"
    real_stream, chunks, grown = model.stream, [], []

    def watching(*args, **kwargs):
        for chunk in real_stream(*args, **{**kwargs, "chunk_seconds": 0.5}):
            chunks.append(chunk[0, 0].numpy())
            yield chunk
            # back here once the file has taken the chunk: the stdlib reader trusts the header alone
            with wave.open(str(partial)) as wav:
                grown.append((wav.getnframes(), partial.stat().st_size))

    monkeypatch.setattr(model, "stream", watching)
    assert model.generate_to_file("calm piano", out, duration=2.0, seed=0) == out
    written = np.cumsum([len(c) for c in chunks])
    assert len(grown) >= 3 and [frames for frames, _ in grown] == written[: len(grown)].tolist()
    assert all(size == 44 + 2 * frames for frames, size in grown)  # header sizes match the data
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no partial, no hidden file left
    audio = np.concatenate(chunks)
    expected = io.BytesIO()
    sf.write(expected, audio, model.sample_rate, format=suffix[1:].upper())
    if suffix == ".wav":  # the partial renamed: byte for byte what soundfile writes of the same audio
        assert out.read_bytes() == expected.getvalue()
    else:  # encoded alongside from the float audio, as it was before the partial existed
        assert sf.info(str(out)).format == "FLAC"
        assert np.array_equal(sf.read(out)[0], sf.read(io.BytesIO(expected.getvalue()))[0])


@pytest.mark.parametrize("suffix", [".wav", ".ogg"])
def test_an_interrupted_stream_keeps_a_valid_partial_wav(model, tmp_path, monkeypatch, suffix):
    real_stream, written = model.stream, []

    def interrupted(*args, **kwargs):
        for chunk in real_stream(*args, **{**kwargs, "chunk_seconds": 0.5}):
            written.append(chunk.shape[-1])
            yield chunk
            if len(written) == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(model, "stream", interrupted)
    out = tmp_path / f"out{suffix}"
    with pytest.raises(KeyboardInterrupt):
        model.generate_to_file("calm piano", out, duration=3.0, seed=0)
    partial = tmp_path / f"out{suffix}.partial"
    assert sorted(p.name for p in tmp_path.iterdir()) == [partial.name]
    wav, rate = sf.read(partial)
    assert sf.info(str(partial)).format == "WAV" and rate == model.sample_rate and len(wav) == sum(written)


def test_a_request_that_cannot_be_generated_creates_no_file(model, tmp_path):
    with pytest.raises(GenerationError, match="cfg_scale -1"):
        model.generate_to_file("calm piano", tmp_path / "out.wav", duration=1.0, cfg_scale=-1)
    assert list(tmp_path.iterdir()) == []


def test_bad_requests_are_generation_errors(model):
    for kwargs, message in [
        ({"duration": 0}, "positive"),
        ({"duration": -1}, "positive"),
        ({"duration": 1e7}, "above the maximum"),
        ({"cfg_scale": -1}, "out of range"),
        ({"temperature": -0.5}, "out of range"),
        ({"top_k": -3}, "out of range"),
        ({"top_p": 1.5}, "out of range"),
    ]:
        with pytest.raises(GenerationError, match=message):
            model.generate("piano", **{"duration": 1.0, **kwargs})
    with pytest.raises(GenerationError, match="empty prompt"):
        model.generate(["piano", "   "], duration=1.0)


def test_save_pretrained_round_trips(model, tmp_path):
    again = TextToMusic.from_pretrained(model.save_pretrained(tmp_path / "copy"))
    assert torch.equal(again.generate_codes("piano", 1.0, seed=1), model.generate_codes("piano", 1.0, seed=1))


LONG_FORM = """
import resource, sys
from ssmttm.generation.pipeline import TextToMusic
model = TextToMusic.from_pretrained(sys.argv[1])
model.generate_to_file("slow ambient", sys.argv[2], duration=float(sys.argv[3]), seed=0, chunk_seconds=2.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_long_form_memory_does_not_grow_with_duration(model_dir, tmp_path):
    peaks = {}
    for seconds in (30, 300):
        out = tmp_path / f"{seconds}.flac"
        done = subprocess.run(
            [sys.executable, "-c", LONG_FORM, str(model_dir), str(out), str(seconds)],
            capture_output=True,
            text=True,
            check=True,
            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        )
        peaks[seconds] = int(done.stdout.split()[-1])  # KiB
        assert sf.info(str(out)).duration == pytest.approx(seconds, abs=0.01)
    # 300 s of float32 audio buffered would add 300 * 22050 * 4 bytes = 26 MB, codes and columns more
    assert abs(peaks[300] - peaks[30]) < 0.05 * peaks[30], peaks


# -- the CLI ---------------------------------------------------------------------------------------


def test_cli_writes_numbered_outputs_with_sidecars(model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("calm piano\n\nfast funk with trumpet\n")
    assert (
        main(
            [
                "generate",
                "--prompts-file",
                str(prompts),
                "--model",
                str(model_dir),
                "--duration",
                "1.5",
                "--seed",
                "4",
                "--top-k",
                "50",
                "-o",
                str(tmp_path / "out.flac"),
            ]
        )
        == 0
    )
    for i, prompt in enumerate(["calm piano", "fast funk with trumpet"]):
        path = tmp_path / f"out_{i}.flac"
        wav, rate = sf.read(path)
        assert rate == 22050 and len(wav) == round(1.5 * 22050) and np.abs(wav).max() > 0
        sidecar = json.loads((tmp_path / f"out_{i}.flac.json").read_text())
        assert sidecar["prompt"] == prompt and sidecar["seed"] == 4 + i and sidecar["sampling"]["top_k"] == 50
        assert sidecar["model"] == str(model_dir) and sidecar["device"] == "cpu"
    assert (
        main(
            [
                "generate",
                "one prompt",
                "--model",
                str(model_dir),
                "--duration",
                "1",
                "--stream",
                "-o",
                str(tmp_path / "one.wav"),
            ]
        )
        == 0
    )
    assert sf.info(str(tmp_path / "one.wav")).frames == 22050


def test_cli_bf16_precision_stores_weights_and_state_in_bf16(model_dir, tmp_path, monkeypatch):
    built = []
    load = TextToMusic.from_pretrained.__func__

    def spy(cls, source, **kwargs):
        built.append(load(cls, source, **kwargs))
        return built[-1]

    monkeypatch.setattr(TextToMusic, "from_pretrained", classmethod(spy))
    out = tmp_path / "bf16.wav"
    argv = ["generate", "piano", "--model", str(model_dir), "--duration", "1", "--precision", "bf16", "-o", str(out)]
    assert main(argv) == 0
    generator = built[0].generator
    assert generator.state_dtype == torch.bfloat16 and generator.lm.heads[0].weight.dtype == torch.bfloat16
    wav, _ = sf.read(out)
    assert np.abs(wav).max() > 0
    assert json.loads((tmp_path / "bf16.wav.json").read_text())["precision"] == "bf16"


def test_cli_bad_input_is_one_line_and_exit_2(model_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((model_dir / "config.json").read_text())
    weights = (model_dir / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(weights[: len(weights) // 2])  # truncated
    (tmp_path / "noise.wav").write_bytes(b"RIFF not really audio")
    model = ["--model", str(model_dir)]
    out = ["-o", str(tmp_path / "x.wav")]
    cases = [
        (["generate", "   ", *model, *out], "empty prompt"),
        (["generate", "piano", *model, "--duration", "0", *out], "positive"),
        (["generate", "piano", *model, "--duration", "99999", *out], "above the maximum"),
        (["generate", "piano", *model, "--cfg", "-2", *out], "--cfg -2: must be >= 0"),
        (["generate", "piano", *model, "--temperature", "-1", *out], "--temperature -1: must be >= 0"),
        (["generate", "piano", *model, "--top-k", "-1", *out], "--top-k -1: must be >= 0"),
        (["generate", "piano", *model, "--top-p", "2", *out], "--top-p 2: must be in [0, 1]"),
        (["generate", "piano", *model, "--continue-from", str(tmp_path / "noise.wav"), *out], "not readable"),
        (["generate", "piano", *model, "--continue-from", str(tmp_path / "none.wav"), *out], "no such audio"),
        (["generate", "piano", "--model", str(tmp_path / "missing"), *out], "no model folder"),
        (["generate", "piano", "--model", str(broken), *out], "not a readable safetensors"),
        (["generate", "piano", *model, "-o", str(tmp_path / "no" / "x.wav")], "no folder"),
        (["generate", "piano", *model, "-o", str(tmp_path / "x.xyz")], "unsupported audio extension"),
        (["generate", "piano", *model, "--device", "gpu7", *out], "not a device name"),
        (["generate", "piano", *model, "--device", "mps", *out], "only cpu and cuda"),
    ]
    if not torch.cuda.is_available():
        cases.append((["generate", "piano", *model, "--device", "cuda", *out], "sees no CUDA device"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (argv, err)


def test_the_demo_command_writes_a_playable_non_silent_file_offline(tmp_path, capsys):
    """What `make demo` runs, with the shipped model (the default --model), shortened to 3 s."""
    out = tmp_path / "demo.wav"
    assert main(["generate", "An upbeat funk groove with slap bass", "--duration", "3", "-o", str(out)]) == 0
    wav, rate = sf.read(out)
    assert rate == 22050 and len(wav) == 3 * 22050
    assert np.sqrt(np.mean(wav**2)) > 1e-3 and np.isfinite(wav).all()
    printed = capsys.readouterr().out
    assert str(out) in printed and "generated in" in printed
    assert json.loads((tmp_path / "demo.wav.json").read_text())["model"].endswith("models/demo")

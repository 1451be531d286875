"""Every codec against one contract (frame arithmetic, determinism, round-trip shapes and rates,
first-K consistency, input errors, chunked encode/decode against a whole pass, streaming decode),
then what is particular to each: loading, names and errors, context sizes against the measured
receptive field, the real architectures' frame arithmetic."""

from __future__ import annotations

import copy
import functools
import math
import time

import pytest
import torch

from ssmttm.codecs import Codec, CodecError, load_codec
from ssmttm.codecs.dac import dac_44khz_config, dac_context_frames
from ssmttm.codecs.encodec import LSTM_WARMUP_FRAMES, encodec_32khz_config, seanet_context_frames

# Every codec the contract covers, by the name of a fixture below that gives a factory
# `num_codebooks -> Codec`. The embedded offline codec joins with one entry: "embedded".
CODECS = ["tiny_dac", "tiny_encodec", "embedded"]
# Chunked encoding may flip a residual-quantizer code where the latents differ by float noise
# (a different convolution length rounds differently); measured 100% equal on these tiny models.
MIN_EQUAL_CODES = 0.99
MIN_SNR_DB = 40.0


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny codecs are all overhead: one thread is faster, and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_encodec_dir(tmp_path_factory):
    """An EnCodec with random weights and a tiny config, saved like a downloaded model: 16 kHz,
    hop 4 * 2 = 8, 4 codebooks of 16 entries (bandwidth 32 kbps / (2000 frames/s * 4 bits)),
    non-causal with LSTMs like facebook/encodec_32khz."""
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(0)
    config = EncodecConfig(
        sampling_rate=16000,
        upsampling_ratios=[4, 2],
        num_filters=4,
        hidden_size=16,
        codebook_size=16,
        target_bandwidths=[8.0, 16.0, 32.0],
        use_causal_conv=False,
        use_conv_shortcut=False,
        num_lstm_layers=1,
    )
    model = EncodecModel(config)
    for layer in model.quantizer.layers:  # transformers starts codebooks at zero: every code would be 0
        layer.codebook.embed.normal_(0.0, 0.1)
    path = tmp_path_factory.mktemp("tiny_encodec")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_dac(tiny_dac_dir):
    return functools.cache(lambda num_codebooks=None: load_codec(str(tiny_dac_dir), num_codebooks))


@pytest.fixture(scope="session")
def tiny_encodec(tiny_encodec_dir):
    return functools.cache(lambda num_codebooks=None: load_codec(str(tiny_encodec_dir), num_codebooks))


@pytest.fixture(scope="session")
def embedded():
    return functools.cache(lambda num_codebooks=None: load_codec("embedded", num_codebooks))


@pytest.fixture(params=CODECS)
def make(request):
    return request.getfixturevalue(request.param)


@pytest.fixture
def codec(make) -> Codec:
    return make()


def noise(frames_or_samples: int, batch: int = 2, channels: int = 1, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, frames_or_samples, generator=gen) * 0.1


def random_codes(codec: Codec, frames: int, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, codec.cardinality, (batch, codec.num_codebooks, frames), generator=gen)


def snr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    error = (reference - other).pow(2).sum()
    return math.inf if error == 0 else float(10 * torch.log10(reference.pow(2).sum() / error))


def test_rates_are_exact_and_consistent(codec):
    assert isinstance(codec.frame_rate, float) and codec.frame_rate == codec.sample_rate / codec.hop_length
    assert codec.num_codebooks >= 1 and codec.cardinality >= 2 and codec.chunk_frames >= 1
    assert all(side >= 0 for side in (*codec.encode_context, *codec.decode_context))


def test_n_samples_give_ceil_n_over_hop_frames(codec):
    hop = codec.hop_length
    for samples in (1, hop - 1, hop, hop + 1, 7 * hop + 3):
        codes = codec.encode(noise(samples), codec.sample_rate)
        assert codes.shape == (2, codec.num_codebooks, math.ceil(samples / hop)), samples
        assert codes.dtype == torch.long and int(codes.min()) >= 0 and int(codes.max()) < codec.cardinality


def test_round_trip_shapes_rates_and_finiteness(codec):
    codes = codec.encode(noise(5 * codec.hop_length + 1), codec.sample_rate)
    wav = codec.decode(codes)
    assert wav.shape == (2, 1, 6 * codec.hop_length) and wav.dtype == torch.float32
    assert torch.isfinite(wav).all() and wav.abs().sum() > 0
    assert codec.decode(codes[..., :0]).shape == (2, 1, 0)


def test_encode_and_decode_are_deterministic(codec):
    wav = noise(40 * codec.hop_length)
    codes = codec.encode(wav, codec.sample_rate)
    assert torch.equal(codes, codec.encode(wav, codec.sample_rate))
    assert torch.equal(codec.decode(codes), codec.decode(codes))


def test_each_batch_row_is_encoded_on_its_own(codec):
    wav = noise(30 * codec.hop_length, batch=3)
    codes = codec.encode(wav, codec.sample_rate)
    assert torch.equal(codes[1:2], codec.encode(wav[1:2], codec.sample_rate))


def test_encode_resamples_and_downmixes(codec):
    rate = codec.sample_rate * 3 // 2 + 1  # not a multiple of the codec's rate
    mono = noise(rate // 10)
    expected = codec.num_frames(round(mono.shape[-1] * codec.sample_rate / rate))
    assert codec.encode(mono, rate).shape[-1] == expected
    assert torch.equal(codec.encode(mono.expand(2, 2, -1), rate), codec.encode(mono, rate))


def test_the_first_k_codebooks_are_the_full_codec_s_first_k(make):
    full = make()
    wav = noise(50 * full.hop_length)
    codes = full.encode(wav, full.sample_rate)
    for k in range(1, full.num_codebooks):
        first_k = make(k)
        assert first_k.num_codebooks == k
        assert torch.equal(first_k.encode(wav, full.sample_rate), codes[:, :k])
        assert first_k.decode(codes[:, :k]).shape == (2, 1, codes.shape[-1] * full.hop_length)


@pytest.mark.parametrize(
    ("wav", "rate", "message"),
    [
        (torch.zeros(1, 1, 100), 0, "sample rate must be a positive integer, got 0"),
        (torch.zeros(1, 1, 100), -16000, "positive integer"),
        (torch.zeros(1, 1, 100), 16000.5, "positive integer"),
        (torch.zeros(1, 1, 100), float("nan"), "positive integer"),
        (torch.zeros(1, 1, 100), "16000", "positive integer"),
        (torch.zeros(100), 16000, r"\(batch, channels, samples\), got \(100,\)"),
        (torch.zeros(1, 1, 1, 100), 16000, r"\(batch, channels, samples\)"),
        (torch.zeros(1, 1, 0), 16000, "cannot encode empty audio"),
        (torch.zeros(0, 1, 100), 16000, "cannot encode empty audio"),
        (torch.tensor([[[0.0, float("nan")]]]), 16000, "NaN, infinite"),
        (torch.tensor([[[0.0, float("inf")]]]), 16000, "NaN, infinite"),
    ],
)
def test_bad_audio_is_a_one_line_error(codec, wav, rate, message):
    with pytest.raises(CodecError, match=message) as err:
        codec.encode(wav, rate)
    assert "\n" not in str(err.value)


def test_bad_codes_are_one_line_errors(codec):
    k, top = codec.num_codebooks, codec.cardinality
    cases = [
        (torch.zeros(k, 3, dtype=torch.long), rf"codes \(batch, {k}, frames\)"),
        (torch.zeros(1, k + 1, 3, dtype=torch.long), rf"codes \(batch, {k}, frames\)"),
        (torch.zeros(1, k, 3), "codes must be integers"),
        (torch.full((1, k, 3), top), rf"codes must lie in 0\.\.{top - 1}"),
        (torch.full((1, k, 3), -1), "codes must lie in"),
    ]
    for codes, message in cases:
        with pytest.raises(CodecError, match=message):
            codec.decode(codes)
        with pytest.raises(CodecError, match=message):
            codec.stream_decoder().push(codes)


def window_sizes(codec: Codec, method: str, monkeypatch) -> list[int]:
    """Record the frames of every window the codec's network sees."""
    sizes, inner = [], getattr(codec, method)

    def spy(x, *args):
        sizes.append(x.shape[-1] // (codec.hop_length if method == "_encode" else 1))
        return inner(x, *args)

    monkeypatch.setattr(codec, method, spy)
    return sizes


@pytest.mark.parametrize("chunk", [1, 7, 40])
def test_chunked_encode_equals_a_whole_pass(codec, chunk, monkeypatch):
    frames = 150
    wav = noise(frames * codec.hop_length - 3, seed=2)
    whole = codec.encode(wav, codec.sample_rate, chunk_frames=10**6)
    sizes = window_sizes(codec, "_encode", monkeypatch)
    chunked = codec.encode(wav, codec.sample_rate, chunk_frames=chunk)
    assert chunked.shape == whole.shape
    assert (chunked == whole).float().mean() >= MIN_EQUAL_CODES
    assert len(sizes) == math.ceil(frames / chunk) and max(sizes) <= chunk + sum(codec.encode_context)


@pytest.mark.parametrize("chunk", [1, 7, 40])
def test_chunked_decode_matches_a_whole_pass(codec, chunk, monkeypatch):
    codes = random_codes(codec, 150)
    whole = codec.decode(codes, chunk_frames=10**6)
    sizes = window_sizes(codec, "_decode", monkeypatch)
    chunked = codec.decode(codes, chunk_frames=chunk)
    assert chunked.shape == whole.shape
    assert snr_db(whole, chunked) >= MIN_SNR_DB
    assert len(sizes) == math.ceil(150 / chunk) and max(sizes) <= chunk + sum(codec.decode_context)


def test_too_little_context_breaks_chunked_decode(make):
    """The context is what makes chunks match: without it the seams are audible (the test above
    would fail), so the context attributes are load-bearing, not decoration."""
    codec = make()
    left, right = codec.decode_context
    if left + right == 0:
        pytest.skip("frame-local decoder: no context to take away")
    codes = random_codes(codec, 150)
    whole = codec.decode(codes, chunk_frames=10**6)
    bare = copy.copy(codec)
    bare.decode_context_frames = 0
    assert snr_db(whole, bare.decode(codes, chunk_frames=7)) < MIN_SNR_DB


@pytest.mark.parametrize("pushes", [[1, 2, 30, 5, 1, 61], [97, 1, 1, 1], [3, 0, 200, 4]])
def test_streaming_decode_matches_a_whole_pass(codec, pushes):
    left, right = codec.decode_context
    codes = random_codes(codec, sum(pushes))
    stream = codec.stream_decoder(chunk_frames=16)
    out, received, emitted = [], 0, 0
    for size in pushes:
        wav = stream.push(codes[..., received : received + size])
        received += size
        emitted += wav.shape[-1]
        out.append(wav)
        # only the look-ahead is held back, and only bounded history is kept
        assert emitted == max(0, received - right) * codec.hop_length
        assert stream.held_frames <= left + right
    out.append(stream.flush())
    streamed = torch.cat(out, dim=-1)
    whole = codec.decode(codes)
    assert streamed.shape == whole.shape
    assert snr_db(whole, streamed) >= MIN_SNR_DB
    with pytest.raises(CodecError, match="flushed"):
        stream.push(codes[..., :1])


def test_a_stream_keeps_its_batch(codec):
    stream = codec.stream_decoder()
    stream.push(random_codes(codec, 3, batch=2))
    with pytest.raises(CodecError, match="stream's batch is 2"):
        stream.push(random_codes(codec, 3, batch=1))


def test_dac_loads_from_a_local_folder_with_exact_rates(tiny_dac_dir):
    codec = load_codec(str(tiny_dac_dir), num_codebooks=2)
    assert (codec.sample_rate, codec.hop_length, codec.num_codebooks, codec.cardinality) == (16000, 8, 2, 16)
    assert codec.frame_rate == 2000.0 and isinstance(codec.frame_rate, float)
    assert codec.name == str(tiny_dac_dir)


def test_encodec_loads_from_a_local_folder_with_exact_rates(tiny_encodec_dir):
    codec = load_codec(str(tiny_encodec_dir), num_codebooks=2)
    assert type(codec).__name__ == "EncodecCodec"
    assert (codec.sample_rate, codec.hop_length, codec.num_codebooks, codec.cardinality) == (16000, 8, 2, 16)
    assert codec.bandwidth == 16.0  # the smallest bandwidth that gives 2 codebooks
    assert load_codec(str(tiny_encodec_dir)).num_codebooks == 4


def test_the_real_architectures_have_the_published_frame_arithmetic():
    dac = dac_44khz_config()
    assert (dac.sampling_rate, dac.hop_length, dac.n_codebooks, dac.codebook_size) == (44100, 512, 9, 1024)
    assert (dac.decoder_hidden_size, dac.hidden_size) == (1536, 1024)
    enc = encodec_32khz_config()
    assert (enc.sampling_rate, enc.hop_length, enc.codebook_size, enc.num_quantizers) == (32000, 640, 2048, 4)
    assert enc.sampling_rate / enc.hop_length == 50.0
    assert dac_context_frames(dac) == (8, 10)  # equal to the receptive field measured with gradients
    assert seanet_context_frames(enc) == ((4, 4), (5, 5))  # measured: (inf, 4), (inf, 4)


def reach(fn, x: torch.Tensor, frame: int, in_per_frame: int, out_per_frame: int) -> tuple[int, int]:
    """Frames (left, right) of x beyond output frame `frame` that its gradient touches: the
    receptive field, measured. x (1, C, L) has `in_per_frame` steps per frame, fn(x) `out_per_frame`."""
    x = x.clone().requires_grad_(True)
    fn(x)[..., frame * out_per_frame : (frame + 1) * out_per_frame].pow(2).sum().backward()
    touched = (x.grad.abs().sum(dim=1)[0] > 0).nonzero().flatten()
    first, last = int(touched.min()), int(touched.max())
    return (
        math.ceil((frame * in_per_frame - first) / in_per_frame),
        math.ceil((last + 1 - (frame + 1) * in_per_frame) / in_per_frame),
    )


def test_dac_context_covers_the_measured_receptive_field(tiny_dac_dir):
    codec = load_codec(str(tiny_dac_dir))
    model, hop, t = codec.model, codec.hop_length, 60
    latent = torch.randn(1, model.config.hidden_size, t)
    decode = reach(model.decoder, latent, 30, 1, hop)
    encode = reach(model.encoder, torch.randn(1, 1, t * hop), 30, hop, 1)
    # derived from the config, it covers the measured field and overshoots by at most one frame
    assert max(encode) <= codec.encode_context[0] <= max(encode) + 1
    assert max(decode) <= codec.decode_context[0] <= max(decode) + 1


def test_encodec_context_covers_the_convolutions_and_warms_up_the_lstm(tiny_encodec_dir):
    codec = load_codec(str(tiny_encodec_dir))
    model, hop, t = codec.model, codec.hop_length, 60
    latent = torch.randn(1, model.config.hidden_size, t)
    decode = reach(model.decoder, latent, 30, 1, hop)
    encode = reach(model.encoder, torch.randn(1, 1, t * hop), 30, hop, 1)
    assert decode[0] == encode[0] == 30  # the LSTM: everything before counts
    assert encode[1] <= codec.encode_context[1] <= encode[1] + 1
    assert decode[1] <= codec.decode_context[1] <= decode[1] + 1
    assert codec.decode_context[0] >= LSTM_WARMUP_FRAMES


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"normalize": True}, "normalize=True"),
        ({"chunk_length_s": 1.0, "overlap": 0.01}, "chunk_length_s=1.0"),
        ({"audio_channels": 2}, "audio_channels=2"),
    ],
)
def test_encodec_configs_we_cannot_stream_are_refused(change, message):
    from transformers import EncodecConfig, EncodecModel

    from ssmttm.codecs.encodec import EncodecCodec

    config = EncodecConfig(upsampling_ratios=[2], num_filters=2, hidden_size=4, codebook_size=4, **change)
    with pytest.raises(CodecError, match=f"{message}.* not supported"):
        EncodecCodec(EncodecModel(config), "odd")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nonsense", "unknown codec 'nonsense'"),
        ("/no/such/folder", "unknown codec '/no/such/folder'.*hf download descript/dac_44khz"),
        (
            "someone/dac_missing",
            "cannot load codec 'someone/dac_missing'.*HF_HUB_OFFLINE=1.*download someone/dac_missing",
        ),
        ("dac", "cannot load codec 'descript/dac_44khz'.*--local-dir DIR`, copy DIR here and pass DIR"),
        ("encodec", "cannot load codec 'facebook/encodec_32khz'.*download facebook/encodec_32khz"),
        ("encodec-32khz", "cannot load codec 'facebook/encodec_32khz'"),
    ],
)
def test_missing_models_fail_at_once_with_one_clear_line(name, message, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache, whatever this machine holds
    start = time.perf_counter()
    with pytest.raises(CodecError, match=message) as err:
        load_codec(name)
    assert time.perf_counter() - start < 2.0
    assert "\n" not in str(err.value)


def test_a_folder_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "dac"}')
    with pytest.raises(CodecError, match=r"cannot load DAC from .*hf download") as err:
        load_codec(str(tmp_path))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("weights", [None, b"not a safetensors file"])
def test_an_encodec_folder_that_does_not_load_says_how_to_get_encodec_not_dac(tmp_path, weights):
    (tmp_path / "config.json").write_text('{"model_type": "encodec"}')
    if weights is not None:
        (tmp_path / "model.safetensors").write_bytes(weights)
    with pytest.raises(CodecError, match=r"cannot load EnCodec from .*hf download facebook/encodec_32khz") as err:
        load_codec(str(tmp_path))
    assert str(tmp_path) in str(err.value) and "dac" not in str(err.value).lower()


def test_bad_codebook_count_and_folders_are_clear_errors(tiny_dac_dir, tiny_encodec_dir, tmp_path):
    with pytest.raises(CodecError, match="has 4 codebooks; cannot use 5"):
        load_codec(str(tiny_dac_dir), num_codebooks=5)
    with pytest.raises(CodecError, match="has 4 codebooks; cannot use 0"):
        load_codec(str(tiny_encodec_dir), num_codebooks=0)
    with pytest.raises(CodecError, match=r"no config\.json"):
        load_codec(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(CodecError, match="model type 'bert'"):
        load_codec(str(tmp_path))


def test_facts_from_the_config_are_the_loaded_codecs(tiny_dac_dir, tiny_encodec_dir):
    from ssmttm.codecs.command import codec_facts
    from ssmttm.codecs.encodec import codebooks_by_bandwidth

    for folder in (tiny_dac_dir, tiny_encodec_dir):
        codec = load_codec(str(folder))
        assert codec_facts(str(folder)) == codec.facts()
    encodec = load_codec(str(tiny_encodec_dir))
    quantizer, config = encodec.model.quantizer, encodec.model.config
    counted = {bw: quantizer.get_num_quantizers_for_bandwidth(bw) for bw in config.target_bandwidths}
    assert codebooks_by_bandwidth(config) == counted == {8.0: 1, 16.0: 2, 32.0: 4}


def test_info_tells_static_facts_without_weights(tiny_dac_dir, monkeypatch, tmp_path, capsys):
    from ssmttm.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # no weights, whatever this machine holds
    assert main(["codec", "info", "dac"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "descript/dac_44khz: DacCodec",
        "  rate          44100 Hz mono, hop 512, 86.13 frames/s",
        "  codebooks     9 of 1024",
        "  context       encode (8, 8), decode (10, 10) frames (left, right)",
    ]
    assert main(["codec", "info", "encodec"]) == 0
    out = capsys.readouterr().out
    assert "32000 Hz mono, hop 640, 50.00 frames/s" in out and "4 of 2048" in out
    only_config = tmp_path / "config-only"  # a folder whose weights were never copied: load_codec refuses it
    only_config.mkdir()
    (only_config / "config.json").write_text((tiny_dac_dir / "config.json").read_text())
    assert main(["codec", "info", str(only_config)]) == 0
    assert "4 of 16" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("someone/codec", "cannot describe codec 'someone/codec'.*HF_HUB_OFFLINE=1.*hf download someone/codec"),
        ("nonsense", "unknown codec 'nonsense': not a local folder, a hub id or one of dac, .*embedded"),
    ],
)
def test_info_of_a_codec_it_cannot_describe_is_one_line(name, message, monkeypatch, tmp_path):
    from ssmttm.codecs.command import codec_facts

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CodecError, match=message) as err:
        codec_facts(name)
    assert "\n" not in str(err.value)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(CodecError, match="model type 'bert'"):
        codec_facts(str(tmp_path))

import pytest
import torch

from ssmttm.codecs import CodecError, load_codec


def test_dac_loads_from_a_local_folder_with_exact_rates(tiny_dac_dir):
    codec = load_codec(str(tiny_dac_dir), num_codebooks=2)
    assert (codec.sample_rate, codec.hop_length, codec.num_codebooks, codec.cardinality) == (16000, 8, 2, 16)
    assert codec.frame_rate == 2000.0 and isinstance(codec.frame_rate, float)
    assert codec.name == str(tiny_dac_dir)


def test_encode_gives_ceil_frames_and_decode_gives_the_codec_rate(tiny_dac_dir):
    codec = load_codec(str(tiny_dac_dir), num_codebooks=3)
    codes = codec.encode(torch.randn(2, 1, 1601) * 0.1, 16000)
    assert codes.shape == (2, 3, 201) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 16
    wav = codec.decode(codes)
    assert wav.shape == (2, 1, 201 * 8) and torch.isfinite(wav).all()


def test_encode_resamples_and_downmixes(tiny_dac_dir):
    codec = load_codec(str(tiny_dac_dir))
    mono = torch.randn(1, 1, 4410) * 0.1
    assert codec.encode(mono, 44100).shape == (1, 4, 200)  # 0.1 s at 16 kHz is 1600 samples
    stereo_same = mono.expand(1, 2, 4410)
    assert torch.equal(codec.encode(stereo_same, 44100), codec.encode(mono, 44100))


def test_the_first_k_codebooks_are_the_full_codec_s_first_k(tiny_dac_dir):
    wav = torch.randn(1, 1, 800) * 0.1
    full = load_codec(str(tiny_dac_dir)).encode(wav, 16000)
    two = load_codec(str(tiny_dac_dir), num_codebooks=2).encode(wav, 16000)
    assert torch.equal(full[:, :2], two)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("nonsense", {}, "unknown codec 'nonsense'"),
        ("someone/dac_missing", {}, "cannot load DAC from 'someone/dac_missing'"),
    ],
)
def test_bad_codec_names_are_clear_errors(name, kwargs, message):
    with pytest.raises(CodecError, match=message):
        load_codec(name, **kwargs)


def test_bad_codebook_count_and_shapes_are_clear_errors(tiny_dac_dir, tmp_path):
    with pytest.raises(CodecError, match="has 4 codebooks; cannot use 5"):
        load_codec(str(tiny_dac_dir), num_codebooks=5)
    with pytest.raises(CodecError, match=r"no config\.json"):
        load_codec(str(tmp_path))
    codec = load_codec(str(tiny_dac_dir))
    with pytest.raises(CodecError, match=r"\(batch, channels, samples\)"):
        codec.encode(torch.randn(100), 16000)
    with pytest.raises(CodecError, match=r"codes must lie in 0\.\.15"):
        codec.decode(torch.full((1, 4, 3), 16))

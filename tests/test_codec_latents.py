"""The codecs' continuous side, for two-stage generation: latents of codes decode like the codes,
the embedded codec's two-stage target composes back to its unquantized features, and targets,
windowed decoding and streaming all equal a whole pass. Tiny random models on the CPU."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from test_codecs import MIN_SNR_DB, noise, random_codes, snr_db, tiny_encodec_dir  # noqa: F401 (a fixture)

from ssmttm.codecs import Codec, CodecError, load_codec
from ssmttm.codecs.base import TwoStageTarget
from ssmttm.codecs.spectral.rvq import dequantize

CODECS = ["tiny_dac", "tiny_encodec", "embedded"]
FRAMES = 40
# Decoding the exact entries through DAC's out_proj, or EnCodec's decoder, is what `decode` does:
# measured bitwise equal on these models; this allows for a BLAS that rounds differently.
CONTINUOUS_ATOL = 1e-6


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_dac(tiny_dac_dir):
    return functools.cache(lambda num_codebooks=None: load_codec(str(tiny_dac_dir), num_codebooks))


@pytest.fixture(scope="session")
def tiny_encodec(tiny_encodec_dir):  # noqa: F811 (the fixture imported above)
    return functools.cache(lambda num_codebooks=None: load_codec(str(tiny_encodec_dir), num_codebooks))


@pytest.fixture(scope="session")
def embedded():
    return functools.cache(lambda num_codebooks=None: load_codec("embedded", num_codebooks))


@pytest.fixture(params=CODECS)
def codec(request) -> Codec:
    return request.getfixturevalue(request.param)()


def music(codec: Codec, frames: int = FRAMES) -> torch.Tensor:
    """(2, 1, frames * hop): two partials with an onset, plus a little noise, so the features
    have both tones and near-silent bins."""
    t = torch.arange(frames * codec.hop_length) / codec.sample_rate
    tone = 0.3 * torch.sin(2 * math.pi * 220 * t) + 0.2 * torch.sin(2 * math.pi * 330 * t) * (t > t[-1] / 2)
    return tone[None, None] + noise(frames * codec.hop_length, seed=3)  # (2, 1, N)


def near_latents(codec: Codec, frames: int, seed: int = 4) -> torch.Tensor:
    """(2, D, frames): latents of random codes moved off the entries, as a stage 2 model would give."""
    z = codec.latents(random_codes(codec, frames))  # (2, D, T)
    gen = torch.Generator().manual_seed(seed)
    return z + 0.02 * torch.randn(z.shape, generator=gen)


def one_line(err: pytest.ExceptionInfo) -> bool:
    return "\n" not in str(err.value)


# ---- latents of codes decode like the codes ----


def test_embedded_latents_are_what_decode_dequantizes(embedded):
    codec = embedded()
    codes = random_codes(codec, FRAMES)  # (2, 4, T)
    z = codec.latents(codes)  # (2, 89, T)
    flat = dequantize(codes.transpose(1, 2).reshape(-1, 4), codec.codebooks)  # (2 * T, 89)
    assert torch.equal(z.transpose(1, 2).reshape(-1, 89), flat)
    assert torch.equal(codec.decode_latents(z), codec.decode(codes))


@pytest.mark.parametrize("snap", [True, False])
def test_dac_latents_decode_like_their_codes(tiny_dac, snap):
    codec = tiny_dac()
    codes = random_codes(codec, FRAMES)
    z = codec.latents(codes)
    if snap:  # snapping the exact entries finds them again: decoding is then `decode` itself
        assert torch.equal(codec.nearest_codes(z), codes)
        assert torch.equal(codec.decode_latents(z, snap=True), codec.decode(codes))
    else:
        torch.testing.assert_close(
            codec.decode_latents(z, snap=False), codec.decode(codes), atol=CONTINUOUS_ATOL, rtol=0
        )


def test_encodec_latents_decode_like_their_codes(tiny_encodec):
    codec = tiny_encodec()
    codes = random_codes(codec, FRAMES)
    torch.testing.assert_close(
        codec.decode_latents(codec.latents(codes)), codec.decode(codes), atol=CONTINUOUS_ATOL, rtol=0
    )


def test_snapping_the_composed_target_gives_the_encoded_codes(codec):
    """DAC's composition is its codebooks' entries, which snap to themselves; an additive codec's is
    its unquantized latent, which the residual quantizer turns into encode's codes. (Snapping a sum
    of entries need not give those entries back: the greedy first stage sees the whole sum.)"""
    wav = music(codec)
    target = codec.two_stage_target(wav, codec.sample_rate)
    codes = codec.nearest_codes(codec.compose(target.coarse, target.residual))
    assert torch.equal(codes, codec.encode(wav, codec.sample_rate))


def test_codebook_ranges_split_the_latents(codec):
    k = codec.num_codebooks
    codes = random_codes(codec, 9)
    whole = codec.latents(codes, 0, k)
    head, tail = codec.latents(codes[:, :1], 0, 1), codec.latents(codes[:, 1:], 1)
    if codec.latent_layout == "stacked":
        assert torch.equal(torch.cat([head, tail], dim=1), whole)
    else:
        torch.testing.assert_close(head + tail, whole)
    assert codec.compose(codes[:, :1], tail).shape == whole.shape


# ---- the two-stage target ----


def test_embedded_target_composes_to_the_unquantized_features(embedded):
    codec = embedded()
    wav = music(codec)
    target = codec.two_stage_target(wav, codec.sample_rate)
    z = codec.compose(target.coarse, target.residual)  # (2, 89, T)
    features = codec.features(wav).transpose(1, 2)  # (2, 89, T): the clip is at the codec's rate
    torch.testing.assert_close(z, features, atol=1e-6, rtol=0)
    quantized = codec.latents(codec.encode(wav, codec.sample_rate))  # what 4 codebooks keep
    assert (z - quantized).abs().max() > 0.05


def test_the_target_is_codebook_0_and_a_residual_of_the_stated_size(codec):
    wav = music(codec, 23)
    target = codec.two_stage_target(wav, codec.sample_rate)
    assert isinstance(target, TwoStageTarget)
    assert target.coarse.shape == (2, 1, 23) and target.coarse.dtype == torch.long
    assert target.residual.shape == (2, codec.latent_dim(1, codec.num_codebooks), 23)
    assert target.residual.dtype == torch.float32 and not target.residual.is_inference()
    assert torch.equal(target.coarse, codec.encode(wav, codec.sample_rate)[:, :1])


def test_the_dac_residual_is_the_other_codebooks_quantized_latents(tiny_dac):
    codec = tiny_dac()
    wav = music(codec)
    codes = codec.encode(wav, codec.sample_rate)
    target = codec.two_stage_target(wav, codec.sample_rate)
    assert torch.equal(target.residual, codec.latents(codes[:, 1:], 1))
    assert torch.equal(codec.compose(target.coarse, target.residual), codec.latents(codes))


@pytest.mark.parametrize("chunk", [1, 7])
def test_a_windowed_target_equals_a_whole_pass(codec, chunk):
    """The coarse codes are exact. The embedded codec's features go through `compression` (x ** 0.3),
    which turns CQT leakage of 1e-8 in a silent bin into 1e-2, so they are compared as amplitudes,
    which is what synthesis plays (measured 5e-6 apart; the audio 100 dB SNR)."""
    wav = music(codec)
    whole = codec.two_stage_target(wav, codec.sample_rate, chunk_frames=10**6)
    windowed = codec.two_stage_target(wav, codec.sample_rate, chunk_frames=chunk)
    assert torch.equal(windowed.coarse, whole.coarse)
    z_whole, z_windowed = codec.compose(whole.coarse, whole.residual), codec.compose(windowed.coarse, windowed.residual)
    if codec.latent_layout == "additive" and hasattr(codec, "features"):
        power = 1 / codec.model.config.compression
        z_whole, z_windowed = z_whole.clamp(min=0) ** power, z_windowed.clamp(min=0) ** power
        torch.testing.assert_close(z_windowed, z_whole, atol=1e-4, rtol=0)
    else:
        torch.testing.assert_close(z_windowed, z_whole, atol=1e-5, rtol=0)


# ---- decoding latents in windows and streams ----


@pytest.mark.parametrize("snap", [True, False])
@pytest.mark.parametrize("chunk", [1, 7])
def test_windowed_decode_latents_matches_a_whole_pass(codec, chunk, snap):
    z = near_latents(codec, 60)
    whole = codec.decode_latents(z, chunk_frames=10**6, snap=snap)
    windowed = codec.decode_latents(z, chunk_frames=chunk, snap=snap)
    assert whole.shape == windowed.shape == (2, 1, 60 * codec.hop_length) and whole.dtype == torch.float32
    assert torch.isfinite(whole).all() and whole.abs().sum() > 0
    assert snr_db(whole, windowed) >= MIN_SNR_DB


@pytest.mark.parametrize("pushes", [[1, 2, 30, 5, 1, 21], [3, 0, 50, 4]])
def test_the_latent_stream_matches_a_whole_decode(codec, pushes):
    left, right = codec.decode_context
    z = near_latents(codec, sum(pushes))
    stream = codec.latent_stream_decoder(chunk_frames=16)
    out, received, emitted = [], 0, 0
    for size in pushes:
        wav = stream.push(z[..., received : received + size])
        received += size
        emitted += wav.shape[-1]
        out.append(wav)
        assert emitted == max(0, received - right) * codec.hop_length
        assert stream.held_frames <= left + right
    out.append(stream.flush())
    streamed = torch.cat(out, dim=-1)
    whole = codec.decode_latents(z)
    assert streamed.shape == whole.shape
    assert snr_db(whole, streamed) >= MIN_SNR_DB
    with pytest.raises(CodecError, match="latent_stream_decoder"):
        stream.push(z[..., :1])


def test_the_default_snap_is_the_codecs(tiny_dac, embedded):
    dac = tiny_dac()
    z = near_latents(dac, 12)
    assert dac.snap_latents is True
    assert torch.equal(dac.decode_latents(z), dac.decode(dac.nearest_codes(z)))
    spectral = embedded()
    z = near_latents(spectral, 12)
    assert spectral.snap_latents is False and not torch.equal(
        spectral.decode_latents(z), spectral.decode_latents(z, snap=True)
    )


# ---- shapes, dims and errors ----


def test_latent_dims(tiny_dac, tiny_encodec, embedded):
    dac, encodec, spectral = tiny_dac(), tiny_encodec(), embedded()
    assert (dac.latent_layout, dac.codebook_latent_dim) == ("stacked", dac.model.config.codebook_dim)
    assert [dac.latent_dim(0, 4), dac.latent_dim(1, 4), dac.latent_dim(2, 3)] == [16, 12, 4]
    assert tiny_dac(2).latent_dim() == 8 and tiny_dac(2).latents(random_codes(tiny_dac(2), 5)).shape == (2, 8, 5)
    assert (encodec.latent_layout, encodec.codebook_latent_dim) == ("additive", encodec.model.config.codebook_dim)
    assert (spectral.latent_layout, spectral.codebook_latent_dim) == ("additive", 89)
    assert spectral.latent_dim(0, 4) == spectral.latent_dim(1, 4) == 89
    assert dac.latents(random_codes(dac, 5)[:, 1:3], 1).shape == (2, 8, 5)


def test_bad_latent_input_is_a_one_line_error(codec):
    d, k = codec.latent_dim(), codec.num_codebooks
    codes = random_codes(codec, 5)
    cases = [
        (lambda: codec.decode_latents(torch.zeros(1, d + 1, 5)), rf"latents \(batch, {d}, frames\)"),
        (lambda: codec.decode_latents(torch.zeros(d, 5)), rf"latents \(batch, {d}, frames\)"),
        (lambda: codec.decode_latents(torch.zeros(1, d, 5, dtype=torch.long)), "floating-point"),
        (lambda: codec.decode_latents(torch.full((1, d, 5), math.nan)), "finite"),
        (lambda: codec.latent_stream_decoder().push(torch.zeros(1, d + 1, 5)), "latents"),
        (lambda: codec.latents(codes, 0, k + 1), "not a range"),
        (lambda: codec.latents(codes[:, :2], 2, 1), "not a range"),
        (lambda: codec.latents(codes[:, :2], 1, k), rf"codes \(batch, {k - 1}, frames\)"),
        (lambda: codec.latent_dim(0, k + 1), "not a range"),
        (lambda: codec.compose(codes[:, :2], torch.zeros(2, codec.latent_dim(1), 5)), r"codes \(batch, 1, frames\)"),
        (lambda: codec.compose(codes[:, :1], torch.zeros(2, codec.latent_dim(1) + 1, 5)), "residual"),
        (lambda: codec.compose(codes[:, :1], torch.zeros(2, codec.latent_dim(1), 4)), "batch and frames"),
    ]
    for call, message in cases:
        with pytest.raises(CodecError, match=message) as err:
            call()
        assert one_line(err), message


class _TokensOnly(Codec):
    """A codec with no continuous side: the base class refuses every latent method."""

    name, sample_rate, hop_length, num_codebooks, cardinality = "tokens", 8000, 4, 2, 8

    def _encode(self, wav):
        return torch.zeros(wav.shape[0], 2, wav.shape[-1] // 4, dtype=torch.long)

    def _decode(self, codes, start_frame=0):
        return torch.zeros(codes.shape[0], 1, codes.shape[-1] * 4)


def test_a_codec_without_latents_refuses_them():
    codec = _TokensOnly()
    codes = torch.zeros(1, 2, 3, dtype=torch.long)
    calls = [
        lambda: codec.latent_dim(),
        lambda: codec.latents(codes),
        lambda: codec.decode_latents(torch.zeros(1, 2, 3)),
        lambda: codec.latent_stream_decoder(),
        lambda: codec.two_stage_target(torch.zeros(1, 1, 12), 8000),
    ]
    for call in calls:
        with pytest.raises(CodecError, match="has no continuous latents") as err:
            call()
        assert one_line(err)
    assert torch.equal(codec.decode(codes), torch.zeros(1, 1, 12))  # tokens still work

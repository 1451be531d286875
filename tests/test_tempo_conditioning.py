"""Tempo conditioning (text/tempo.py): the BPM a caption states becomes one more conditioning
position, told apart at 1 BPM, and captions that state none encode exactly as before."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_lm

from ssmttm.conditioning import Conditioning
from ssmttm.generation.pipeline import TextToMusic
from ssmttm.lm import MusicLM
from ssmttm.presets import load_preset
from ssmttm.pretrained import save_pretrained
from ssmttm.text import EmbeddingCache, TextEncoderError, load_text_encoder
from ssmttm.text.stated_tempo import stated_bpm
from ssmttm.text.tempo import TempoConditioned, tempo_vector


@pytest.fixture(scope="module")
def plain():
    return load_text_encoder("minilm")


@pytest.fixture(scope="module")
def tempo(plain):
    return TempoConditioned(plain)


@pytest.mark.parametrize(
    ("caption", "bpm"),
    [
        ("funky groove at 104 BPM", 104.0),
        ("rock, distorted guitar, 140 bpm", 140.0),
        ("It is played at 72 beats per minute.", 72.0),
        ("a 1000 bpm blur, then 90 BPM", 90.0),  # out of range numbers are skipped, not taken
        ("a slow waltz with 3 beats to the bar", None),
        ("", None),
    ],
)
def test_stated_bpm(caption, bpm):
    assert stated_bpm(caption) == bpm


def test_every_integer_tempo_is_told_apart():
    grid = torch.arange(20, 401, dtype=torch.float32)
    vectors = tempo_vector(grid, 384)
    similarity = vectors @ vectors.T  # each row's own tempo must be its unique best match
    assert torch.equal(similarity.argmax(dim=1), torch.arange(len(grid)))
    # 1 BPM apart is a step of at least 15% of a vector's length, even at 400 BPM (0.36% apart)
    steps = (vectors[1:] - vectors[:-1]).norm(dim=1)
    assert float(steps.min()) > 0.15 * float(vectors[0].norm())


def test_nearby_tempos_have_nearby_vectors():
    base = tempo_vector(torch.tensor([120.0]), 384)[0]
    offsets = torch.tensor([0.0, 0.5, 1.0, 2.0, 4.0, 8.0])
    similarity = tempo_vector(120.0 + offsets, 384) @ base
    assert bool((similarity[1:] < similarity[:-1]).all()), similarity


def test_odd_widths_fill_the_last_column_with_zero():
    vector = tempo_vector(torch.tensor([90.0, 150.0]), 7)
    assert vector.shape == (2, 7) and bool((vector[:, -1] == 0).all())


def test_captions_without_a_tempo_encode_as_the_inner_encoder(plain, tempo):
    captions = ["a calm piano melody", "", "jazz", "three beats to the bar"]
    emb, mask = tempo(captions)
    inner, inner_mask = plain(captions)
    assert torch.equal(mask, inner_mask)
    torch.testing.assert_close(emb, inner, rtol=0, atol=0)


def test_a_stated_tempo_adds_one_last_position(plain, tempo):
    captions = ["funk at 100 BPM", "jazz", "", "rock, 140 bpm"]
    emb, mask = tempo(captions)
    inner, inner_mask = plain(captions)
    assert mask.sum(dim=1).tolist() == (inner_mask.sum(dim=1) + torch.tensor([1, 0, 0, 1])).tolist()
    assert bool(mask[:, -1][[0, 1, 3]].all())  # left-padded: the last position of a real caption is real
    expected = tempo_vector(torch.tensor([100.0, 140.0]), tempo.dim)
    for row, vector in zip((0, 3), expected, strict=True):
        torch.testing.assert_close(emb[row, -1], vector)
        torch.testing.assert_close(emb[row][mask[row]][:-1], inner[row][inner_mask[row]], rtol=0, atol=0)
    torch.testing.assert_close(emb[1][mask[1]], inner[1][inner_mask[1]], rtol=0, atol=0)
    assert not bool(mask[2].any())


def test_embedding_depends_only_on_its_caption(tempo):
    captions = ["funk at 100 BPM", "jazz", "a long calm ambient piece with strings at 60 bpm"]
    emb, mask = tempo(captions)
    for i, text in enumerate(captions):
        alone, alone_mask = tempo([text])
        torch.testing.assert_close(emb[i][mask[i]], alone[0][alone_mask[0]], atol=1e-5, rtol=1e-5)


def test_a_tempo_past_the_token_limit_still_counts(tempo, caplog):
    text = "a slow ambient drone with field recordings " * 80 + "at 66 BPM"
    emb, mask = tempo([text])
    assert "dropped" in caplog.text
    assert emb.shape[1] == tempo.max_length == tempo.inner.max_length + 1 and bool(mask.all())
    torch.testing.assert_close(emb[0, -1], tempo_vector(torch.tensor([66.0]), tempo.dim)[0])


def test_tokens_of_the_inner_encoder_are_refused(plain, tempo):
    with pytest.raises(TextEncoderError, match="tokenize them with this encoder"):
        tempo.encode(plain.tokenize(["jazz at 90 BPM"]))


def test_loaded_by_name_with_its_own_id(tiny_t5_dir):
    encoder = load_text_encoder("minilm+tempo")
    assert isinstance(encoder, TempoConditioned) and encoder.name == "minilm+tempo"
    assert encoder.id == load_text_encoder("minilm").id + "+tempo"
    t5 = load_text_encoder(f"{tiny_t5_dir}+tempo")
    caption = ["waltz at 90 BPM"]
    assert t5.dim == 768 and t5(caption)[0].shape[1] == t5.inner.tokenize(caption).ids.shape[1] + 1
    with pytest.raises(TextEncoderError, match="left padding"):
        load_text_encoder(f"{tiny_t5_dir}+tempo", padding="release")


def test_the_cache_keeps_it_apart_from_the_inner_encoder(plain, tempo, tmp_path):
    cache = EmbeddingCache(tmp_path)
    inner, _ = cache.embed(plain, ["jazz at 90 BPM"])
    tempo_emb, _ = cache.embed(tempo, ["jazz at 90 BPM"])
    assert tempo_emb.shape[1] == inner.shape[1] + 1
    again, _ = cache.embed(tempo, ["jazz at 90 BPM"])
    torch.testing.assert_close(again, tempo_emb, rtol=0, atol=0)


def test_the_tempo_changes_what_the_lm_predicts(tempo):
    lm = tiny_lm(conditioning="cross", text_dim=tempo.dim)
    codes = torch.randint(0, lm.cfg.cardinality, (1, lm.cfg.num_codebooks, 6))
    with torch.no_grad():
        losses = [lm.compute_loss(codes, Conditioning(*tempo([f"jazz at {bpm} BPM"]))).loss for bpm in (90, 91, 150)]
    assert all(torch.isfinite(loss) for loss in losses)
    assert len({float(loss) for loss in losses}) == 3


def test_a_saved_model_loads_its_tempo_encoder(tmp_path):
    torch.manual_seed(0)
    tiny = ["backbone.d_model=32", "backbone.n_layers=2", "backbone.mlp_hidden=64", "backbone.mamba2.headdim=16"]
    lm = MusicLM(load_preset("tiny-simba", tiny))
    model = TextToMusic.from_pretrained(save_pretrained(lm, tmp_path, codec="embedded", text_encoder="minilm+tempo"))
    assert isinstance(model.text_encoder, TempoConditioned)
    wav = model.generate(["jazz at 90 BPM"], duration=0.2, seed=0)
    assert wav.shape[0] == 1 and bool(torch.isfinite(wav).all())

"""The beat clock: its arithmetic, the LM reading it the same way in parallel and step by step,
silence for rows without a tempo and for the null condition, the training batch's clock (a crop
starts part-way into the piece), fine-tuning from an export that had no clock, and generation."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from conftest import KINDS, tiny_lm
from test_training import CAPTIONS, FRAMES, make_collection, train_config

from ssmttm.beat_clock import FEATURES, HARMONICS, clock_features, no_clock, tempo_clock
from ssmttm.conditioning import Conditioning
from ssmttm.config import ConfigError, to_dict
from ssmttm.data.dataset import TokenWindows
from ssmttm.generation import Generator, SamplingConfig
from ssmttm.generation.pipeline import TextToMusic
from ssmttm.lm import MusicLM
from ssmttm.presets import load_preset
from ssmttm.pretrained import save_pretrained
from ssmttm.training.config import resolve
from ssmttm.training.data import CaptionedWindows, collate
from ssmttm.training.lm_task import init_from_pretrained
from ssmttm.training.trainer import Trainer

L, TEXT_DIM = 4, 6


def clocked_lm(kind: str = "simba", conditioning: str = "cross", seed: int = 0) -> MusicLM:
    """A tiny LM whose clock is switched on and not silent (it starts at zero for fine-tuning)."""
    lm = tiny_lm(kind, conditioning, seed=seed, beat_clock=True)
    with torch.no_grad():
        lm.clock.weight.normal_(0.0, 1.0)
    return lm


def test_tempo_clock_arithmetic():
    rate, start = tempo_clock(120.0, frame_rate=50.0, start_s=1.5)
    assert rate == pytest.approx(2 / 50) and start == pytest.approx(3.0)  # 2 beats/s, 3 beats in
    assert all(math.isnan(v) for v in tempo_clock(None, 50.0))


def test_features_repeat_every_bar_and_mark_the_beat():
    clock = torch.tensor([[0.25, 0.0]])  # a beat every 4 frames, a 4/4 bar every 16
    feats = clock_features(clock, torch.arange(64))[0]  # (64, FEATURES)
    assert feats.shape == (64, FEATURES)
    assert torch.allclose(feats[:16], feats[16:32], atol=1e-5) and torch.allclose(feats[:16], feats[48:], atol=1e-5)
    beat = HARMONICS.index(1.0)  # cos of the beat harmonic: 1 on every beat, -1 half-way between
    assert torch.allclose(feats[::4, beat], torch.ones(16), atol=1e-5)
    assert torch.allclose(feats[2::4, beat], -torch.ones(16), atol=1e-5)
    assert not torch.allclose(feats[0], feats[4])  # the bar harmonics tell the beats of a bar apart


def test_phase_stays_exact_far_into_a_piece():
    clock = torch.tensor([[0.3, 0.1]], dtype=torch.float64)
    far = 10**6 + 7
    got = clock_features(clock, torch.tensor([far]))[0, 0]
    expected = clock_features(
        torch.tensor([[0.3, math.fmod(0.1 + 0.3 * far, 4.0)]], dtype=torch.float64), torch.tensor([0])
    )[0, 0]
    assert torch.allclose(got, expected, atol=1e-4)


def test_rows_without_a_tempo_get_a_silent_clock():
    clock = torch.cat([torch.tensor([[0.2, 0.0]]), no_clock(1)])
    feats = clock_features(clock, torch.arange(8))
    assert bool((feats[1] == 0).all()) and bool((feats[0] != 0).any())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("conditioning", ["prefix", "cross"])
def test_step_by_step_decoding_reads_the_clock_like_the_parallel_forward(kind, conditioning):
    lm = clocked_lm(kind, conditioning)
    codes = torch.randint(0, lm.cfg.cardinality, (2, lm.cfg.num_codebooks, 10))
    seq = lm.pattern.build(codes)
    text = torch.randn(2, L, TEXT_DIM)
    clock = torch.tensor([[0.21, 0.5], [0.13, 1.0]])
    with torch.no_grad():
        full = lm(seq, Conditioning(text, None, clock))
        logits, state = lm.prefill(Conditioning(text, None, clock), seq[..., :3])  # a prompt of 3 columns, then steps
        assert torch.allclose(logits, full[:, :, 3], atol=1e-4)
        for s in range(3, seq.shape[-1]):
            logits, state = lm.step(seq[..., s], state)
            assert torch.allclose(logits, full[:, :, s + 1], atol=1e-4), s


def test_the_clock_changes_only_rows_that_state_a_tempo_and_are_not_the_null_condition():
    lm = clocked_lm()
    seq = lm.pattern.build(torch.randint(0, lm.cfg.cardinality, (3, lm.cfg.num_codebooks, 8)))
    text = torch.randn(3, L, TEXT_DIM)
    mask = torch.ones(3, L, dtype=torch.bool)
    mask[2] = False  # row 2 is the null condition (no caption)
    clock = torch.tensor([[0.2, 0.0], [math.nan, math.nan], [0.2, 0.0]])
    with torch.no_grad():
        with_clock, without = lm(seq, Conditioning(text, mask, clock)), lm(seq, Conditioning(text, mask, None))
    assert not torch.allclose(with_clock[0], without[0])
    assert torch.equal(with_clock[1], without[1]) and torch.equal(with_clock[2], without[2])


def test_a_new_clock_starts_silent():
    """Zero-initialised, so a model fine-tuned with a clock starts exactly where it was."""
    torch.manual_seed(0)
    lm = tiny_lm("simba", "cross", beat_clock=True)
    seq = lm.pattern.build(torch.randint(0, lm.cfg.cardinality, (1, lm.cfg.num_codebooks, 6)))
    text = torch.randn(1, L, TEXT_DIM)
    with torch.no_grad():
        assert torch.equal(
            lm(seq, Conditioning(text, None, torch.tensor([[0.2, 0.0]]))), lm(seq, Conditioning(text, None, None))
        )


def test_unconditional_rows_of_cfg_hear_no_clock():
    lm = clocked_lm()
    text = torch.randn(2, L, TEXT_DIM)
    clock = torch.tensor([[0.2, 0.0], [0.3, 0.0]])
    gen = Generator(lm)

    def run(scale, with_clock):
        sampling = SamplingConfig(temperature=1.0, cfg_scale=scale)
        return gen.generate(Conditioning(text, None, clock if with_clock else None), 10, sampling=sampling, seed=0)

    assert torch.equal(run(0.0, True), run(0.0, False))  # scale 0 is the unconditional model alone
    assert not torch.equal(run(3.0, True), run(3.0, False))


def test_training_batches_carry_the_clock_of_the_stated_tempo(tmp_path):
    captions = ["a slow piano piece at 60 BPM", CAPTIONS[1]]
    collection = make_collection(tmp_path / "collection", clips=8, validation=2, captions=captions, start_s=2.0)
    windows = TokenWindows(collection, "train", window_frames=FRAMES // 2, seed=0)
    cache = {c: torch.zeros(3, 4) for c in captions}

    class Cache:
        def get(self, key, caption):
            return cache[caption]

    items = [CaptionedWindows(windows, Cache(), None)[i] for i in range(2)]
    batch = collate(items)
    rate = windows.frame_rate
    stated, silent = batch["clock"]
    start_s = items[0]["start_s"]
    assert start_s >= 2.0 and start_s == pytest.approx(2.0 + round((start_s - 2.0) * rate) / rate)
    assert stated.tolist() == pytest.approx([1.0 / rate, start_s])  # 60 BPM: one beat a second
    assert bool(torch.isnan(silent).all())


def test_fine_tuning_adds_a_clock_to_an_export_that_had_none(tmp_path):
    collection = make_collection(tmp_path / "collection")
    base = resolve(train_config(collection), ["schedule.max_steps=1"])
    torch.manual_seed(3)
    source = MusicLM(base.model)
    exported = save_pretrained(source, tmp_path / "export", codec="toy", text_encoder="minilm")
    config = resolve(train_config(collection), ["schedule.max_steps=1", "model.beat_clock=true"])
    tuned = MusicLM(config.model)
    init_from_pretrained(tuned, str(exported))
    assert set(tuned.state_dict()) == set(source.state_dict()) | {"clock.weight"}
    assert bool((tuned.clock.weight == 0).all())
    for key, value in source.state_dict().items():
        assert torch.equal(tuned.state_dict()[key], value), key
    wider = resolve(train_config(collection), ["model.backbone.d_model=48"])
    with pytest.raises(ConfigError, match="does not fit model"):
        init_from_pretrained(MusicLM(wider.model), str(exported))
    with pytest.raises(ConfigError, match="cannot read"):
        init_from_pretrained(tuned, str(tmp_path / "missing"))
    # and through the trainer: a step of fine-tuning from the export, with the clock read
    tuning = resolve(to_dict(config), [f"run.init_from={exported}"])
    counters = Trainer(tuning, tmp_path / "run").fit()
    assert counters.step == 1
    # a resumed run takes its weights from its checkpoint, not the export, which may be gone by then
    shutil.rmtree(exported)
    more = resolve(to_dict(tuning), ["schedule.max_steps=2"])
    assert Trainer(more, tmp_path / "run", config_may_change=True).fit().step == 2


def test_a_saved_model_with_a_clock_generates_from_a_stated_tempo(tmp_path):
    torch.manual_seed(0)
    tiny = ["backbone.d_model=32", "backbone.n_layers=2", "backbone.mlp_hidden=64", "backbone.mamba2.headdim=16"]
    lm = MusicLM(load_preset("tiny-simba", [*tiny, "beat_clock=true"]))
    with torch.no_grad():
        lm.clock.weight.normal_(0.0, 1.0)
    model = TextToMusic.from_pretrained(save_pretrained(lm, tmp_path, codec="embedded", text_encoder="minilm+tempo"))
    assert model.lm.cfg.beat_clock
    clock = model.conditioning(["jazz at 90 BPM", "jazz"], model.sampling()).clock  # then the 2 unconditional rows
    assert clock[0].tolist() == pytest.approx([1.5 / model.frame_rate, 0.0]) and bool(torch.isnan(clock[1:]).all())
    # streaming reads the clock the same way: joined chunks equal the whole generation
    whole = model.generate(["jazz at 90 BPM", "jazz"], duration=1.0, seed=0)
    streamed = torch.cat(list(model.stream(["jazz at 90 BPM", "jazz"], duration=1.0, seed=0, chunk_seconds=0.3)), -1)
    assert torch.allclose(streamed, whole, atol=1e-5)
    stated, plain = model.generate_codes(["jazz at 90 BPM", "jazz"], duration=0.5, seed=0)
    with torch.no_grad():
        model.lm.clock.weight.zero_()
    stated_silent, plain_silent = model.generate_codes(["jazz at 90 BPM", "jazz"], duration=0.5, seed=0)
    assert not torch.equal(stated, stated_silent) and torch.equal(plain, plain_silent)


@pytest.mark.parametrize("kind", ["simba", "mamba", "simba3", "transformer"])
def test_a_step_with_fewer_rows_than_its_clock_is_refused(kind):
    """The clock's input is added before the backbone sees the rows: it would broadcast one over two."""
    lm = clocked_lm(kind)
    text = torch.randn(2, L, TEXT_DIM)
    seq = lm.pattern.build(torch.randint(0, lm.cfg.cardinality, (2, lm.cfg.num_codebooks, 4)))
    with torch.no_grad():
        _, state = lm.prefill(Conditioning(text, None, torch.tensor([[0.21, 0.5], [0.13, 1.0]])), seq[..., :2])
        with pytest.raises(ValueError, match="1 token rows on a state whose beat clock has 2"):
            lm.step(seq[:1, :, 2], state)

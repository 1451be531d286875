"""The synthetic corpus: deterministic for any worker count, valid audio, captions that are true,
audio that matches its metadata (tempo, drums, key), hold-out specs, and resuming."""

from __future__ import annotations

import argparse
import json
import re
import sys

import librosa
import numpy as np
import pytest

from ssmttm.audio import load_audio
from ssmttm.data.synth import (
    CorpusSettings,
    HoldOut,
    RendererMissingError,
    piece_record,
    synthesize_corpus,
)
from ssmttm.data.synth import corpus as corpus_module
from ssmttm.data.synth import render as render_module
from ssmttm.data.synth.captions import DRUM_PHRASES, NO_DRUM_PHRASES
from ssmttm.data.synth.command import add_synth_command
from ssmttm.data.synth.drums import GROOVES
from ssmttm.data.synth.melody import CADENCES, RHYTHMS, parse_cell
from ssmttm.data.synth.theory import diatonic_chord, pitch_class, voice_chord
from ssmttm.data.synth.vocabulary import DYNAMICS_PHRASES, INSTRUMENTS, MOODS, STYLES, dynamics_for

N, SEED, DURATION = 20, 1, 8.0  # seed 1: its first 20 pieces cover all 8 styles, 9 with drums, 11 without


@pytest.fixture(scope="module")
def corpus_dirs(tmp_path_factory):
    """The same corpus made by one worker and by two."""
    one, two = tmp_path_factory.mktemp("synth_1w"), tmp_path_factory.mktemp("synth_2w")
    synthesize_corpus(one, n=N, seed=SEED, workers=1, duration_s=DURATION)
    synthesize_corpus(two, n=N, seed=SEED, workers=2, duration_s=DURATION)
    return one, two


def _records(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def _audio(folder, record) -> np.ndarray:
    wav, rate = load_audio(folder / record["file"])
    assert rate == record["sample_rate"] == 44_100 and wav.shape == (1, round(DURATION * rate))
    return wav[0]


def test_corpus_is_deterministic_and_valid_for_any_worker_count(corpus_dirs):
    one, two = corpus_dirs
    assert (one / "metadata.jsonl").read_bytes() == (two / "metadata.jsonl").read_bytes()
    records = _records(one)
    assert [r["index"] for r in records] == list(range(N))
    assert len({r["id"] for r in records}) == N and all(str(r["index"]) in r["id"] for r in records)
    for record in records:
        assert {"caption", "style", "lead", "accompaniment", "tempo_bpm", "key", "mode", "mood", "dynamics"} <= set(
            record
        )
        assert isinstance(record["drums"], bool) and isinstance(record["accompaniment"], list)
        a, b = _audio(one, record), _audio(two, record)
        np.testing.assert_array_equal(a, b)
        assert np.isfinite(a).all()
        assert np.abs(a).max() < 0.95, "clipped"
        assert np.sqrt(np.mean(a**2)) > 0.01, "silent"
    assert len({r["style"] for r in records}) == len(STYLES)
    assert {r["drums"] for r in records} == {True, False}


def test_other_seeds_and_sample_rates(tmp_path):
    first = [piece_record(CorpusSettings(seed=SEED), i)[1]["caption"] for i in range(5)]
    other = [piece_record(CorpusSettings(seed=SEED + 1), i)[1]["caption"] for i in range(5)]
    assert first != other
    summary = synthesize_corpus(tmp_path, n=1, seed=3, sample_rate=22_050, duration_s=2.0)
    wav, rate = load_audio(tmp_path / _records(tmp_path)[0]["file"])
    assert rate == 22_050 and wav.shape == (1, 44_100) and summary.rendered == 1


def _tempo_ok(estimate: float, stated: float) -> bool:
    return any(abs(estimate - stated * f) <= 0.05 * stated * f for f in (0.5, 1.0, 2.0))


@pytest.mark.slow  # beat tracking, HPSS and chroma of every piece, about 19 s
def test_audio_matches_its_metadata(corpus_dirs):
    """Beat-tracked tempo, percussive energy and the chroma's strongest classes against the metadata."""
    one, _ = corpus_dirs
    tempo_hits, tonic_hits, high_perc, perc_share = 0, 0, {True: [], False: []}, {True: [], False: []}
    records = _records(one)
    for record in records:
        y = librosa.resample(_audio(one, record), orig_sr=44_100, target_sr=22_050)
        tempo, _ = librosa.beat.beat_track(y=y, sr=22_050)
        tempo_hits += _tempo_ok(float(np.atleast_1d(tempo)[0]), record["tempo_bpm"])
        spec = np.abs(librosa.stft(y))
        harmonic, percussive = librosa.decompose.hpss(spec)
        total = float(np.sum(spec**2))
        # Every groove has a cymbal, hi-hat or tambourine: broadband percussive energy above 5 kHz,
        # where the pitched instruments of this SoundFont put almost nothing.
        high = librosa.fft_frequencies(sr=22_050) > 5_000
        high_perc[record["drums"]].append(float(np.sum(percussive[high] ** 2)) / total)
        perc_share[record["drums"]].append(float(np.sum(percussive**2) / np.sum(harmonic**2 + percussive**2)))
        chroma = librosa.feature.chroma_cqt(y=y, sr=22_050).mean(axis=1)
        tonic_hits += pitch_class(record["key"]) in np.argsort(chroma)[-3:]
    assert tempo_hits >= 0.9 * len(records), f"tempo within 5% on {tempo_hits}/{len(records)}"
    assert tonic_hits >= 0.8 * len(records), f"tonic among the 3 strongest chroma on {tonic_hits}/{len(records)}"
    assert min(high_perc[True]) > 2 * max(high_perc[False]), high_perc
    assert np.mean(perc_share[True]) > 3 * np.mean(perc_share[False]), perc_share


def _phrases_in(text: str, phrases) -> list[str]:
    return [p for p in phrases if re.search(rf"(?<![\w-]){re.escape(p.lower())}(?![\w-])", text)]


def test_captions_say_what_the_metadata_says_and_nothing_false():
    settings = CorpusSettings(seed=SEED)
    captions = []
    all_drum_phrases = [p for phrases in DRUM_PHRASES.values() for p in phrases]
    # Mood words that mean nothing else in a caption ("driving" also describes rock drums).
    elsewhere = " ".join(all_drum_phrases + [p for ps in DYNAMICS_PHRASES.values() for p in ps])
    mood_words = {p: name for name, mood in MOODS.items() for p in mood.phrases if p not in elsewhere}
    for index in range(400):
        attrs, record = piece_record(settings, index)
        text = record["caption"].lower()
        captions.append(text)
        style = STYLES[attrs.style]
        assert _phrases_in(text, style.adjectives + style.nouns), text
        assert _phrases_in(text, INSTRUMENTS[attrs.lead].phrases), text
        # Strip the instruments that play; no other instrument may be named.
        rest = text
        for name in (attrs.lead, *attrs.accompaniment):
            for phrase in sorted(INSTRUMENTS[name].phrases, key=len, reverse=True):
                rest = rest.replace(phrase.lower(), " ")
        absent = [
            p
            for name, inst in INSTRUMENTS.items()
            if name not in (attrs.lead, *attrs.accompaniment)
            for p in inst.phrases
        ]
        assert not _phrases_in(rest, absent), text
        if attrs.drums:
            assert not _phrases_in(text, NO_DRUM_PHRASES) and "without drums" not in text, text
        else:
            assert not _phrases_in(text, all_drum_phrases), text
        for bpm in re.findall(r"(\d+) (?:bpm|beats per minute)", text):
            assert abs(int(bpm) - attrs.tempo_bpm) <= 2.5, text
        for mode in re.findall(r"\b(major|minor)\b", text):
            assert mode == attrs.mode, text
        if "slow" in text:
            assert attrs.tempo_bpm < 80, text
        if re.search(r"\bfast\b", text):
            assert attrs.tempo_bpm >= 130, text
        for phrase, mood in mood_words.items():
            if mood != attrs.mood and phrase not in MOODS[attrs.mood].phrases:
                assert not _phrases_in(text, [phrase]), text
    assert len(set(captions)) == len(captions)
    with_tempo = sum(bool(re.search(r"bpm|beats per minute|tempo|slow|fast|upbeat|lively|paced", c)) for c in captions)
    assert 0.2 < with_tempo / len(captions) < 0.9
    assert sum("bpm" in c for c in captions) > 20


def test_bpm_captions_add_the_true_tempo_and_change_nothing_else(tmp_path):
    """--bpm-captions: 0 is the captions as always; 1 makes every caption state its exact BPM, in the
    caption's own shape, and leaves the rest of the caption, the attributes and the audio alone."""
    # Captions of seed 1 as the caption writer made them before the option existed (commit
    # 0ea9956): the default must not have moved a single draw. Tags, one sentence, one sentence,
    # and prose that already states its tempo.
    before_the_option = [
        "reggae, trumpet lead, clean-toned electric guitar, Hammond-style organ, electric bass, "
        "a one-drop drum beat, groovy, slow-paced, instrumental",
        "A sentimental folk instrumental with a flute lead, backed by acoustic piano.",
        "A mysterious ambient piece with a vibraphone lead, backed by synth pad and harp, with no drums or percussion.",
        "An EDM track in which a piano carries the main melody. It moves at roughly 120 beats per minute. "
        "It is driven by off-beat open hi-hats. It feels ethereal.",
    ]
    assert SEED == 1
    for index, caption in enumerate(before_the_option):
        assert piece_record(CorpusSettings(seed=SEED), index)[1]["caption"] == caption
        assert piece_record(CorpusSettings(seed=SEED, bpm_captions=0.0), index)[1]["caption"] == caption
    every = CorpusSettings(seed=SEED, bpm_captions=1.0)
    assert piece_record(every, 0)[1]["caption"].startswith(before_the_option[0] + ", ")  # a tag
    assert piece_record(every, 1)[1]["caption"].startswith(before_the_option[1][:-1] + ", at ")  # a clause
    assert piece_record(every, 3)[1]["caption"] == before_the_option[3]  # said once is enough
    stated = re.compile(r"(\d+) (?:bpm|beats per minute)", re.IGNORECASE)
    already = 0
    for index in range(200):
        attrs, before = piece_record(CorpusSettings(seed=SEED), index)
        attrs_every, after = piece_record(every, index)
        assert attrs_every == attrs
        found = [int(bpm) for bpm in stated.findall(after["caption"])]
        assert found and all(abs(bpm - attrs.tempo_bpm) <= 2.5 for bpm in found), after["caption"]
        if stated.search(before["caption"]):
            already += 1
            assert after["caption"] == before["caption"]  # said once is enough
        else:
            assert after["caption"].startswith(before["caption"].rstrip(".")), (before["caption"], after["caption"])
            assert str(attrs.tempo_bpm) in after["caption"]
    assert 0 < already < 100
    half = sum(
        bool(stated.search(piece_record(CorpusSettings(seed=SEED, bpm_captions=0.5), i)[1]["caption"]))
        for i in range(200)
    )
    assert already + 40 < half < 200 - 40
    with pytest.raises(ValueError, match="share of captions stating a BPM"):
        CorpusSettings(seed=SEED, bpm_captions=1.5)
    one, two = tmp_path / "plain", tmp_path / "bpm"
    synthesize_corpus(one, n=2, seed=SEED, duration_s=1.0)
    synthesize_corpus(two, n=2, seed=SEED, duration_s=1.0, bpm_captions=1.0)
    for a, b in zip(_records(one), _records(two), strict=True):
        np.testing.assert_array_equal(load_audio(one / a["file"])[0], load_audio(two / b["file"])[0])
        assert stated.search(b["caption"])


def test_hold_out_leaves_combinations_out_and_only_held_out_makes_them(tmp_path):
    spec = "style=jazz,lead=saxophone;style=rock,lead=piano"
    hold_out = HoldOut.parse(spec)
    free = CorpusSettings(seed=SEED)
    without = CorpusSettings(seed=SEED, hold_out=hold_out)
    only = CorpusSettings(seed=SEED, hold_out=hold_out, only_held_out=True)
    held_in_free = 0
    for index in range(300):
        plain = piece_record(free, index)[0]
        kept = piece_record(without, index)[0]
        assert not hold_out.matches(kept)
        if hold_out.matches(plain):
            held_in_free += 1
        else:  # rejection sampling changes held-out pieces only
            assert kept == plain
        made = piece_record(only, index)[0]
        assert (made.style, made.lead) in {("jazz", "saxophone"), ("rock", "piano")}
    assert held_in_free > 0, "the spec should have hit something in 300 pieces"

    synthesize_corpus(tmp_path, n=3, seed=SEED, hold_out=spec, only_held_out=True, duration_s=1.0)
    assert all(r["held_out"] and hold_out.matches(piece_record(only, r["index"])[0]) for r in _records(tmp_path))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("colour=red", "hold-out key 'colour' is unknown"),
        ("style=polka", "hold-out style='polka' is unknown"),
        ("style=jazz,lead", "is not of the form key=value"),
        ("style=jazz,style=rock", "sets style twice"),
        ("style=classical piano,lead=saxophone", "can never occur"),
        ("style=ambient,drums=true", "can never occur"),
        ("style=reggae,lead=organ,accompaniment=organ", "can never occur"),
        ("key=H", "not a note name"),
        ("drums=maybe", "use true or false"),
        (" ; ", "names no combination"),
    ],
)
def test_bad_hold_out_specs_are_clear_errors(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        HoldOut.parse(spec)
    assert "\n" not in str(info.value)


def test_specs_that_leave_nothing_are_refused_up_front(tmp_path):
    with pytest.raises(ValueError, match="only_held_out needs a hold-out spec"):
        synthesize_corpus(tmp_path, n=1, seed=0, only_held_out=True)
    with pytest.raises(ValueError, match="leaves \\(almost\\) nothing"):
        synthesize_corpus(tmp_path, n=1, seed=0, hold_out="drums=true;drums=false")


def test_resume_renders_only_missing_pieces(tmp_path, monkeypatch):
    fresh, resumed = tmp_path / "fresh", tmp_path / "resumed"
    synthesize_corpus(fresh, n=6, seed=SEED, duration_s=1.0)
    synthesize_corpus(resumed, n=6, seed=SEED, duration_s=1.0)
    records = _records(resumed)
    (resumed / records[1]["file"]).unlink()  # killed before its audio was written
    (resumed / "records" / f"{records[3]['id']}.json").unlink()  # killed between audio and record
    (resumed / "records" / f"{records[4]['id']}.json").write_text("{")  # not a record
    (resumed / "metadata.jsonl").unlink()
    kept = resumed / records[0]["file"]
    kept_mtime = kept.stat().st_mtime_ns

    rendered = []
    original = corpus_module.render_piece

    def counting(attrs, settings, index):
        rendered.append(index)
        return original(attrs, settings, index)

    monkeypatch.setattr(corpus_module, "render_piece", counting)
    summary = synthesize_corpus(resumed, n=6, seed=SEED, duration_s=1.0)
    assert sorted(rendered) == [1, 3, 4] and summary.rendered == 3 and summary.skipped == 3
    assert kept.stat().st_mtime_ns == kept_mtime
    assert (resumed / "metadata.jsonl").read_bytes() == (fresh / "metadata.jsonl").read_bytes()
    for record in records:
        np.testing.assert_array_equal(load_audio(resumed / record["file"])[0], load_audio(fresh / record["file"])[0])

    rendered.clear()  # other settings make other pieces: nothing is skipped
    synthesize_corpus(resumed, n=2, seed=SEED, duration_s=2.0)
    assert sorted(rendered) == [0, 1]


def test_missing_tinysoundfont_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tinysoundfont", None)
    render_module._loaded_soundfont.cache_clear()
    try:
        with pytest.raises(ImportError, match=re.escape("pip install --no-deps tinysoundfont")) as info:
            render_module.require_renderer()
        assert isinstance(info.value, RendererMissingError)
    finally:
        monkeypatch.undo()
        render_module._loaded_soundfont.cache_clear()


def test_synth_command(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_synth_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["synth", "--n", "2", "--out", str(tmp_path), "--seed", "1", "--duration", "1"])
    args.run(args)
    assert "synth: 2 pieces" in capsys.readouterr().out and len(_records(tmp_path)) == 2
    bad = parser.parse_args(["synth", "--n", "2", "--out", str(tmp_path), "--seed", "1", "--hold-out", "mood=polka"])
    with pytest.raises(ValueError, match="hold-out mood='polka' is unknown"):
        bad.run(bad)
    share = parser.parse_args(["synth", "--n", "1", "--out", str(tmp_path), "--seed", "1", "--bpm-captions", "2"])
    with pytest.raises(ValueError, match=re.escape("must be in [0, 1], got 2.0")):
        share.run(share)


def test_theory():
    vi = diatonic_chord("vi", pitch_class("C"), "major", seventh=False)
    assert vi.tones == (9, 0, 4)
    dominant = diatonic_chord("V7", pitch_class("A"), "minor", seventh=False)
    assert dominant.tones == (4, 8, 11, 2)  # E G# B D: harmonic minor's major dominant
    assert diatonic_chord("VII", pitch_class("A"), "minor", seventh=False).tones == (7, 11, 2)
    c_major = voice_chord((0, 4, 7), None, 55, 76)
    f_major = voice_chord((5, 9, 0), c_major, 55, 76)
    assert all(55 <= p <= 76 for p in c_major + f_major)
    assert sum(abs(a - b) for a, b in zip(c_major, f_major, strict=True)) <= 3  # C-E-G -> C-F-A


def test_vocabulary_is_consistent():
    for style in STYLES.values():
        for mode, probability in (("major", 1 - style.minor_probability), ("minor", style.minor_probability)):
            if probability > 0:
                moods = [MOODS[m] for m in style.moods if mode in MOODS[m].modes]
                assert moods and all(dynamics_for(style, m) for m in moods), (style.name, mode)
        assert all(name in INSTRUMENTS for name in style.leads)
        assert all(name in INSTRUMENTS for slot in style.slots for name in slot.pool)
        cells = RHYTHMS[style.name] + CADENCES.get(style.name, ())
        assert all(sum(beats for _, beats, _ in parse_cell(cell)) == 4 for cell in cells)
        if style.drums_probability > 0:
            groove = GROOVES[style.name]
            assert all(len(p) == 16 for options in groove.voices.values() for p in options)
            assert all(len(p) == 4 for p in groove.fill.values())

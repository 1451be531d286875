"""Preparing collections into token shards: layouts, bad inputs, splits, shares, resume after kill."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ssmttm.audio import save_audio
from ssmttm.codecs import load_codec
from ssmttm.data.prepare import PrepareConfig, PrepareError, prepare
from ssmttm.data.shards import TokenStore, read_jsonl
from ssmttm.data.sources import SourceError, discover

RATE = 22050


def tone(seconds, freq=220.0, channels=1, seed=0):
    t = np.arange(int(seconds * RATE)) / RATE
    rng = np.random.default_rng(seed)
    wav = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)
    return np.repeat(wav[None].astype(np.float32), channels, axis=0)


GOOD = {
    "song_a.wav": "a calm piano piece",
    "song_b.flac": "fast rock with drums",
    "odd name (1).wav": "a song with an odd file name",
    "ünïcødé-ß.flac": "a song with a unicode file name",
    "-leading-dash.wav": "a song whose name starts with a dash",
    "sub/dir/song_c.wav": "a song in a subfolder",
}


def write_good(root: Path):
    for k, name in enumerate(GOOD):
        save_audio(root / name, tone(2.5, 110 * (k + 2), channels=2 if k % 2 else 1, seed=k), RATE)


def write_bad(root: Path) -> dict[str, str]:
    """Every kind of bad input, with the reason the failures manifest must give."""
    (root / "zero.wav").write_bytes(b"")
    save_audio(root / "full.wav", tone(2.0), RATE)
    (root / "truncated.wav").write_bytes((root / "full.wav").read_bytes()[:3000])
    (root / "full.wav").unlink()
    (root / "not_audio.wav").write_text("this is text, not sound")
    save_audio(root / "tiny.wav", tone(2.0)[:, :3], RATE)
    save_audio(root / "silent.wav", np.zeros((1, RATE * 2), dtype=np.float32), RATE)
    save_audio(root / "uncaptioned.wav", tone(1.0), RATE)
    save_audio(root / "empty_caption.wav", tone(1.0), RATE)
    save_audio(root / "bad_utf8.wav", tone(1.0), RATE)
    return {
        "zero.wav": "empty file",
        "truncated.wav": "truncated",
        "not_audio.wav": "not audio: a text file, not readable as wav",
        "tiny.wav": "shorter than one codec frame",
        "silent.wav": "silent",
        "uncaptioned.wav": "no caption",
        "empty_caption.wav": "empty caption",
        "bad_utf8.wav": "not valid UTF-8",
        "missing.wav": "file not found",
    }


def write_csv_captions(path: Path, captions: dict[str, str], extra_bad: bool = True):
    rows = [("file", "caption"), *captions.items()]
    if extra_bad:
        rows += [
            ("zero.wav", "x"),
            ("truncated.wav", "x"),
            ("not_audio.wav", "x"),
            ("tiny.wav", "x"),
            ("silent.wav", "x"),
            ("empty_caption.wav", "  "),
            ("missing.wav", "a file that is not there"),
        ]
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    if extra_bad:  # one caption whose bytes are not UTF-8
        with path.open("ab") as f:
            f.write(b"bad_utf8.wav,caf\xe9 latin-1 bytes\n")


@pytest.fixture
def collection(tmp_path):
    root = tmp_path / "collection"
    write_good(root)
    reasons = write_bad(root)
    write_csv_captions(root / "captions.csv", GOOD)
    return root, reasons


def run(source, out, codec_dir, captions=None, workers=1, share=(0, 1), separator=None, **settings):
    config = PrepareConfig(
        source=str(source),
        out=str(out),
        codec=str(codec_dir),
        captions=str(captions) if captions else None,
        segment_s=1.0,
        items_per_unit=2,
        **settings,
    )
    return prepare(config, workers=workers, share=share, separator=separator)


def test_bad_inputs_are_listed_with_reasons_and_the_run_completes(collection, tmp_path, tiny_dac_dir):
    root, reasons = collection
    result = run(root, tmp_path / "out", tiny_dac_dir, root / "captions.csv")
    assert result.merge is not None and result.merge.clips > 0
    failures = {f["file"]: f["reason"] for f in read_jsonl(tmp_path / "out" / "failures.jsonl")}
    assert set(failures) == set(reasons)
    for file, reason in reasons.items():
        assert reason in failures[file], (file, failures[file])
    store = TokenStore(tmp_path / "out")
    assert {r["file"] for r in store} == set(GOOD)  # odd names are fine
    assert all(r["caption"] == GOOD[r["file"]] for r in store)


def with_samples(wav, values):
    """A copy of wav with its first samples replaced: one bad value among good audio."""
    wav = wav.copy()
    wav[0, 100 : 100 + len(values)] = values
    return wav


def write_inf(path: Path):
    save_audio(path, with_samples(tone(2.0), [np.inf]), RATE, subtype="FLOAT")  # PCM would clip it


def write_nan(path: Path):
    save_audio(path, with_samples(tone(2.0), [np.nan, np.nan]), RATE, subtype="FLOAT")


# One bad file among good ones: (writer, the reason failures.jsonl must give)
ONE_BAD = {
    "inf.wav": (write_inf, "non-finite samples (1 infinite)"),
    "nan.wav": (write_nan, "non-finite samples (2 NaN)"),  # its RMS is NaN: it once read as "silent"
    "loop.wav": (
        lambda p: p.symlink_to(p.name),
        "symlink loop (loop.wav -> loop.wav): following it never reaches a file",
    ),
    "x.wav": (lambda p: p.mkdir(), "a directory, not an audio file"),
    "y.mp3": (lambda p: p.write_text("a text file, not sound\n"), "not audio: a text file, not readable as mp3"),
}


@pytest.mark.parametrize("bad", sorted(ONE_BAD))
def test_one_bad_file_is_one_failure_and_the_run_goes_on(tmp_path, tiny_dac_dir, bad):
    root = tmp_path / "c"
    good = {"song_a.wav": "a calm piano piece", "song_b.flac": "fast rock with drums", "song_c.wav": "a third song"}
    for k, name in enumerate(good):
        save_audio(root / name, tone(1.5, 200 + 100 * k, seed=k), RATE)
    write, reason = ONE_BAD[bad]
    write(root / bad)
    write_csv_captions(root / "captions.csv", {**good, bad: "the bad one"}, extra_bad=False)
    result = run(root, tmp_path / "out", tiny_dac_dir, root / "captions.csv")
    assert result.merge is not None and result.units_encoded == result.units_total
    assert read_jsonl(tmp_path / "out" / "failures.jsonl") == [{"file": bad, "reason": reason}]
    assert {r["file"] for r in TokenStore(tmp_path / "out")} == set(good)


def test_an_encode_error_fails_its_item_alone_and_leaves_none_of_its_clips(tmp_path, tiny_dac_dir, monkeypatch):
    import ssmttm.data.prepare as prepare_module
    from ssmttm.codecs import CodecError

    real = load_codec(str(tiny_dac_dir))

    class Refusing:
        """The real codec, but audio that peaks above 0.9 is refused as the codec refuses NaN."""

        def __getattr__(self, name):
            return getattr(real, name)

        def encode(self, wav, rate):
            if wav.abs().max() > 0.9:
                raise CodecError("refused for the test")
            return real.encode(wav, rate)

    monkeypatch.setattr(prepare_module, "load_codec", lambda *args: Refusing())
    root = tmp_path / "c"
    save_audio(root / "good.wav", tone(2.5, 220), RATE)
    loud = tone(2.5, 330, seed=1)
    loud[0, RATE + 100] = 0.95  # in the second 1 s segment: the first one encodes before the error
    save_audio(root / "loud.wav", loud, RATE, subtype="FLOAT")
    write_csv_captions(root / "captions.csv", {"good.wav": "good", "loud.wav": "loud"}, extra_bad=False)
    result = run(root, tmp_path / "out", tiny_dac_dir, root / "captions.csv")
    assert result.merge is not None
    reason = "segment 1 could not be encoded (refused for the test)"
    assert read_jsonl(tmp_path / "out" / "failures.jsonl") == [{"file": "loud.wav", "reason": reason}]
    store = TokenStore(tmp_path / "out")
    assert {r["file"] for r in store} == {"good.wav"}
    shard = np.load(tmp_path / "out" / "shards" / "unit-00000.npy")
    assert shard.shape[1] == sum(r["frames"] for r in store)  # loud.wav's first clip was not kept


def test_non_finite_output_of_the_vocal_remover_is_a_failure(tmp_path, tiny_dac_dir):
    root = tmp_path / "c"
    save_audio(root / "x.wav", tone(1.5, 220), RATE)
    (root / "c.csv").write_text("file,caption\nx.wav,a tone\n")
    result = run(
        root,
        tmp_path / "out",
        tiny_dac_dir,
        root / "c.csv",
        remove_vocals=True,
        separator=lambda w, r: np.full_like(w, np.nan),
    )
    assert result.merge is not None and result.merge.clips == 0
    [failure] = read_jsonl(tmp_path / "out" / "failures.jsonl")
    assert failure["reason"].startswith("non-finite samples after vocal removal (")


def test_clips_hold_the_codec_tokens_of_their_segment(collection, tmp_path, tiny_dac_dir):
    root, _ = collection
    run(root, tmp_path / "out", tiny_dac_dir, root / "captions.csv")
    store = TokenStore(tmp_path / "out")
    codec = load_codec(str(tiny_dac_dir))
    from ssmttm.audio import load_audio

    record = next(r for r in store if r["file"] == "song_b.flac" and r["segment"] == 1)
    wav, rate = load_audio(root / "song_b.flac")
    segment = wav[:, RATE : 2 * RATE]
    import torch

    expected = codec.encode(torch.from_numpy(segment)[None], rate)[0].numpy()
    assert np.array_equal(store.tokens(record), expected)
    clips = [r for r in store if r["file"] == "song_b.flac"]
    assert [r["segment"] for r in clips] == [0, 1]  # 2.5 s in 1 s segments: the 0.5 s tail is under min_segment_s
    assert store.manifest["codec"]["frame_rate"] == 2000.0


@pytest.mark.parametrize("fmt", ["json", "json-list", "jsonl"])
def test_caption_formats_agree(tmp_path, fmt):
    root = tmp_path / "c"
    write_good(root)
    path = root / ("captions.jsonl" if fmt == "jsonl" else "captions.json")
    if fmt == "json":
        path.write_text(json.dumps(GOOD))
    elif fmt == "json-list":
        path.write_text(json.dumps([{"file": f, "caption": c} for f, c in GOOD.items()]))
    else:
        path.write_text("".join(json.dumps({"file": f, "caption": c, "bpm": 90}) + "\n" for f, c in GOOD.items()))
    write_csv_captions(root / "captions.csv", GOOD, extra_bad=False)
    items, failures = discover(root, path)
    reference, _ = discover(root, root / "captions.csv")
    assert failures == []
    assert [(i.id, i.file, i.caption) for i in items] == [(i.id, i.file, i.caption) for i in reference]
    if fmt == "jsonl":
        assert all(i.meta == {"bpm": 90} for i in items)


def test_unusable_captions_files_are_one_clear_error(tmp_path):
    root = tmp_path / "c"
    write_good(root)
    (root / "bad.json").write_text("{not json")
    (root / "bad.csv").write_text("name,text\nx,y\n")
    with pytest.raises(SourceError, match="not valid JSON"):
        discover(root, root / "bad.json")
    with pytest.raises(SourceError, match="columns 'file' and 'caption'"):
        discover(root, root / "bad.csv")
    with pytest.raises(SourceError, match="source folder not found"):
        discover(tmp_path / "nope", None)


def test_split_is_by_song_and_exclusions_are_left_out(tmp_path, tiny_dac_dir):
    root = tmp_path / "c"
    records = []
    for song in range(8):
        for part in range(2):  # two files per song: the split must keep them together
            name = f"s{song}_part{part}.wav"
            save_audio(root / name, tone(1.2, 150 + 20 * song, seed=song * 2 + part), RATE)
            records.append({"file": name, "caption": f"song {song}", "song": f"song-{song}"})
    (root / "meta.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "exclude.txt").write_text("song-7\ns0_part1.wav\n")
    run(
        root,
        tmp_path / "out",
        tiny_dac_dir,
        root / "meta.jsonl",
        validation_fraction=0.25,
        exclude=str(tmp_path / "exclude.txt"),
    )
    store = TokenStore(tmp_path / "out")
    split_of = {}
    for record in store:
        assert split_of.setdefault(record["song"], record["split"]) == record["split"]
    assert "song-7" not in split_of and "s0_part1.wav" not in {r["file"] for r in store}
    assert sorted(split_of.values()).count("validation") == 2  # a quarter of the 7 songs, rounded
    assert store.manifest["excluded"] == 3
    assert store.manifest["splits"]["validation"]["songs"] == 2


def test_jamendo_layout(tmp_path, tiny_dac_dir):
    root = tmp_path / "jamendo"
    tsv = ["TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS"]
    metadata = {}
    for k, track in enumerate([214, 1100, 3100]):
        relative = f"{track % 100:02d}/{track}.mp3"
        save_audio(root / relative, tone(2.2, 200 + 50 * k, seed=k), RATE)
        tsv.append(f"track_{track:07d}\tartist_1\talbum_1\t{relative}\t2.2\tgenre---rock\tmood/theme---happy")
        metadata[f"track_{track:07d}"] = {"path": relative, "rephrased_caption": f"track {track} caption"}
    metadata["extra"] = {"path": "00/1100/segment_1.mp3", "rephrased_caption": "second segment of 1100"}
    (root / "raw_30s_cleantags.tsv").write_text("\n".join(tsv) + "\n")
    (tmp_path / "meta.json").write_text(json.dumps(metadata))
    run(root, tmp_path / "out", tiny_dac_dir, tmp_path / "meta.json")
    store = TokenStore(tmp_path / "out")
    assert {r["song"] for r in store} == {"track_0000214", "track_0001100", "track_0003100"}
    by_segment = {(r["song"], r["segment"]): r["caption"] for r in store}
    assert by_segment[("track_0001100", 0)] == "track 1100 caption"
    assert by_segment[("track_0001100", 1)] == "second segment of 1100"
    assert next(r for r in store)["meta"]["tags"] == ["genre---rock", "mood/theme---happy"]


def test_workers_and_shares_give_the_same_bytes(collection, tmp_path, tiny_dac_dir):
    root, _ = collection
    captions = root / "captions.csv"
    run(root, tmp_path / "one", tiny_dac_dir, captions)
    run(root, tmp_path / "pool", tiny_dac_dir, captions, workers=2)
    first = run(root, tmp_path / "shared", tiny_dac_dir, captions, share=(1, 2))
    assert first.merge is None and not (tmp_path / "shared" / "index.jsonl").exists()
    second = run(root, tmp_path / "shared", tiny_dac_dir, captions, share=(0, 2))
    assert second.merge is not None
    for other in ("pool", "shared"):
        for name in ("index.jsonl", "failures.jsonl", "manifest.json"):
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / other / name).read_bytes(), (other, name)
        for shard in (tmp_path / "one" / "shards").iterdir():
            assert shard.read_bytes() == (tmp_path / other / "shards" / shard.name).read_bytes()


def test_vocal_removal_fails_before_any_work_without_demucs(collection, tmp_path, tiny_dac_dir):
    root, _ = collection
    with pytest.raises(PrepareError, match="needs the demucs package"):
        run(root, tmp_path / "out", tiny_dac_dir, root / "captions.csv", remove_vocals=True)
    assert not (tmp_path / "out").exists()


def left_channel_only(wav, rate):
    """A stand-in separator: what is 'removed' is everything but the first channel."""
    return wav[:1]


def test_vocal_removal_plumbing_with_a_stand_in_separator(tmp_path, tiny_dac_dir):
    stereo, mono = tmp_path / "stereo", tmp_path / "mono"
    two = np.stack([tone(1.5, 220)[0], tone(1.5, 330, seed=5)[0]])
    save_audio(stereo / "x.wav", two, RATE)
    save_audio(mono / "x.wav", two[:1], RATE)
    for folder in (stereo, mono):
        (folder / "c.csv").write_text("file,caption\nx.wav,two tones\n")
    run(stereo, tmp_path / "separated", tiny_dac_dir, stereo / "c.csv", remove_vocals=True, separator=left_channel_only)
    run(mono, tmp_path / "reference", tiny_dac_dir, mono / "c.csv")
    a, b = TokenStore(tmp_path / "separated"), TokenStore(tmp_path / "reference")
    assert np.array_equal(a.tokens(a.records[0]), b.tokens(b.records[0]))
    assert a.manifest["settings"]["remove_vocals"] is True


def test_resuming_with_other_settings_is_refused(collection, tmp_path, tiny_dac_dir):
    root, _ = collection
    run(root, tmp_path / "out", tiny_dac_dir, root / "captions.csv")
    with pytest.raises(PrepareError, match="prepared with other settings"):
        run(root, tmp_path / "out", tiny_dac_dir, root / "captions.csv", validation_fraction=0.5)


SLOW_PREPARE = """
import sys, time
import ssmttm.data.prepare as prepare
original = prepare.load_audio
def slow(path):
    time.sleep(0.4)
    return original(path)
prepare.load_audio = slow
from ssmttm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def cli_prepare(root, out, codec_dir, slow):
    args = [
        "data",
        "prepare",
        "--source",
        str(root),
        "--captions",
        str(root / "captions.csv"),
        "--codec",
        str(codec_dir),
        "--out",
        str(out),
        "--segment-seconds",
        "1",
        "--items-per-unit",
        "1",
    ]
    code = SLOW_PREPARE if slow else "import sys; from ssmttm.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_with_only_the_missing_units(collection, tmp_path, tiny_dac_dir):
    root, _ = collection
    shards = tmp_path / "killed" / "shards"
    process = cli_prepare(root, tmp_path / "killed", tiny_dac_dir, slow=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shards.glob("*.json"))) < 3:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(list(shards.glob("*.json")))
    units_total = len(json.loads((tmp_path / "killed" / "plan.json").read_text())["units"])
    assert units_total == len(GOOD) + 5  # the good files and the five whose problem shows only in the audio
    assert 3 <= done_before < units_total  # killed between the first shards and the last
    assert not (tmp_path / "killed" / "index.jsonl").exists()
    assert all(p.with_suffix(".npy").is_file() for p in shards.glob("*.json"))

    resumed = cli_prepare(root, tmp_path / "killed", tiny_dac_dir, slow=False)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"encoded {units_total - done_before} items in {units_total - done_before} units" in out
    assert f"({done_before} units were already done" in out

    fresh = cli_prepare(root, tmp_path / "fresh", tiny_dac_dir, slow=False)
    assert fresh.wait(timeout=300) == 0
    for path in (tmp_path / "fresh" / "shards").iterdir():
        assert path.read_bytes() == (shards / path.name).read_bytes(), path.name
    assert (tmp_path / "fresh" / "index.jsonl").read_bytes() == (tmp_path / "killed" / "index.jsonl").read_bytes()
    assert not list((tmp_path / "killed").rglob("*.tmp"))


def test_cli_errors_are_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ssmttm.cli",
            "data",
            "prepare",
            "--source",
            str(tmp_path / "nope"),
            "--codec",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("ssmttm: error:") and "Traceback" not in result.stderr


def test_our_synthetic_corpus_prepares_without_a_captions_argument(tmp_path, tiny_dac_dir):
    from ssmttm.data.synth import synthesize_corpus

    synthesize_corpus(tmp_path / "corpus", n=2, seed=5, duration_s=2.0, sample_rate=22050)
    result = run(tmp_path / "corpus", tmp_path / "out", tiny_dac_dir)
    assert result.merge is not None and result.merge.failures == 0
    store = TokenStore(tmp_path / "out")
    metadata = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "corpus" / "metadata.jsonl").open()}
    assert {r["song"] for r in store} == set(metadata)  # a piece is a song: its clips never straddle splits
    for record in store:
        piece = metadata[record["song"]]
        assert record["caption"] == piece["caption"]
        assert record["meta"]["style"] == piece["style"] and record["meta"]["tempo_bpm"] == piece["tempo_bpm"]

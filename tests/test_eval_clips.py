"""Reading generated clips and reference sets, and caching reference statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from ssmttm.eval.cache import StatsCache, content_hash
from ssmttm.eval.clips import ClipsError, generated_clips, reference_clips
from ssmttm.eval.frechet import GaussianStats


def _wav(path, seconds=0.1, value=0.1):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.full(int(16000 * seconds), value, np.float32), 16000)
    return path


def test_generated_clips_come_with_their_sidecars_prompts(tmp_path):
    for i, prompt in enumerate(["calm piano", "fast funk"]):
        wav = _wav(tmp_path / f"out_{i}.wav")
        (tmp_path / f"{wav.name}.json").write_text(json.dumps({"prompt": prompt, "seed": i}))
    clips = generated_clips(tmp_path)
    assert [(c.path.name, c.caption) for c in clips] == [("out_0.wav", "calm piano"), ("out_1.wav", "fast funk")]
    (tmp_path / "list.csv").write_text("file,prompt\nout_1.wav,slow jazz\n")
    assert [(c.path.name, c.caption) for c in generated_clips(tmp_path / "list.csv")] == [("out_1.wav", "slow jazz")]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, "no audio files in"),
        (lambda d: _wav(d / "a.wav"), "has no sidecar a.wav.json"),
        (lambda d: (_wav(d / "a.wav"), (d / "a.wav.json").write_text('{"seed": 1}')), "a.wav.json has no prompt"),
        (lambda d: (_wav(d / "a.wav"), (d / "a.wav.json").write_text("{")), "is not valid JSON"),
    ],
)
def test_generated_sets_without_prompts_are_one_line_errors(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(ClipsError, match=message):
        generated_clips(tmp_path)


def test_a_captioned_folder_and_the_synthetic_layout(tmp_path):
    _wav(tmp_path / "a.wav")
    _wav(tmp_path / "b.wav")
    records = [{"file": "a.wav", "caption": "calm piano", "style": "ambient"}, {"file": "b.wav", "caption": "funk"}]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    clips, missing = reference_clips(tmp_path)
    assert [(c.path.name, c.caption) for c in clips] == [("a.wav", "calm piano"), ("b.wav", "funk")]
    assert clips[0].meta["style"] == "ambient" and missing == []


def test_musiccaps_rows_without_a_clip_are_listed_and_skipped(tmp_path):
    _wav(tmp_path / "clips" / "abc.flac")  # found under the pattern's stem with another extension
    (tmp_path / "musiccaps.csv").write_text(
        "ytid,start_s,end_s,caption,aspect_list\nabc,30,40,a calm piano,[]\nxyz,0,10,loud metal,[]\n"
    )
    clips, missing = reference_clips(tmp_path / "clips", musiccaps=tmp_path / "musiccaps.csv")
    assert [(c.path.name, c.caption, c.meta["ytid"]) for c in clips] == [("abc.flac", "a calm piano", "abc")]
    assert missing == [f"xyz.wav: not in {tmp_path / 'clips'}"]


def test_song_describer_reads_its_named_columns(tmp_path):
    _wav(tmp_path / "audio" / "00" / "7.2min.wav")
    (tmp_path / "sdd.csv").write_text(
        "caption_id,track_id,caption,path\n1,7,warm strings,00/7.2min.wav\n2,8,a drum solo,00/8.2min.wav\n"
    )
    clips, missing = reference_clips(tmp_path / "audio", song_describer=tmp_path / "sdd.csv")
    assert [(c.caption, c.meta["caption_id"]) for c in clips] == [("warm strings", "1")]
    assert len(missing) == 1 and missing[0].startswith("00/8.2min.wav")
    (tmp_path / "bad.csv").write_text("track_id,caption\n7,x\n")
    with pytest.raises(ClipsError, match="has no columns caption_id, path"):
        reference_clips(tmp_path / "audio", song_describer=tmp_path / "bad.csv")


def test_the_cache_is_hit_until_a_reference_file_or_the_embedding_changes(tmp_path):
    files = [_wav(tmp_path / "ref" / f"{i}.wav", value=0.1 * (i + 1)) for i in range(3)]
    cache, calls = StatsCache(tmp_path / "cache"), []

    def compute():
        calls.append(1)
        return GaussianStats.of(np.random.default_rng(len(calls)).normal(size=(5, 4)))

    key = content_hash(files)
    first, hit = cache.get("musicnn-mtt", key, compute)
    again, hit_again = cache.get("musicnn-mtt", content_hash(reversed(files)), compute)
    assert (hit, hit_again, len(calls)) == (False, True, 1)
    np.testing.assert_array_equal(again.cov, first.cov)
    assert again.count == 5
    _, other_embedding = cache.get("clap", key, compute)
    _wav(files[1], value=0.7)  # same name, new bytes
    _, changed = cache.get("musicnn-mtt", content_hash(files), compute)
    assert (other_embedding, changed, len(calls)) == (False, False, 3)

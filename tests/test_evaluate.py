"""`ssmttm evaluate` end to end: a hand-made model for exact expectations, musicnn for the real path,
and every bad input as one line and exit code 2."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from ssmttm.cli import main
from ssmttm.eval import evaluate as evaluate_module
from ssmttm.eval import models

RATE = 8000
CAPTIONS = ["a low hum", "a high whistle", "soft noise", "a mid tone"]


class Loudness:
    """Windows of 0.25 s: embedding (rms, mean |x|, zero-crossing rate); logits from the same."""

    id, sample_rate = "loudness-1", RATE

    def embeddings(self, wav: np.ndarray) -> np.ndarray:
        w = wav[: len(wav) // 2000 * 2000].reshape(-1, 2000)
        zcr = (np.diff(np.sign(w), axis=1) != 0).mean(axis=1)
        return np.stack([np.sqrt((w**2).mean(axis=1)), np.abs(w).mean(axis=1), zcr], axis=1)

    def logits(self, wav: np.ndarray) -> np.ndarray:
        return 10 * self.embeddings(wav)


def _clip(path, kind: int, seed: int = 0):
    t = np.arange(RATE * 2) / RATE
    rng = np.random.default_rng(seed)
    wav = [
        0.5 * np.sin(2 * np.pi * 110 * t),
        0.3 * np.sin(2 * np.pi * 3000 * t),
        0.1 * rng.normal(size=t.size),
        0.4 * np.sin(2 * np.pi * 660 * t),
    ][kind] * (1 + 0.2 * rng.random(t.size))
    sf.write(path, wav.astype(np.float32), RATE)


@pytest.fixture
def sets(tmp_path, monkeypatch):
    monkeypatch.setitem(models.MODELS, "loudness", Loudness)
    ref, gen = tmp_path / "ref", tmp_path / "gen"
    ref.mkdir()
    gen.mkdir()
    records = []
    for i, caption in enumerate(CAPTIONS):
        _clip(ref / f"r{i}.wav", i)
        records.append({"file": f"r{i}.wav", "caption": caption})
        shutil.copy(ref / f"r{i}.wav", gen / f"g{i}.wav")
        (gen / f"g{i}.wav.json").write_text(json.dumps({"prompt": caption}))
    (ref / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return gen, ref, tmp_path


def _run(gen, ref, tmp_path, *extra) -> dict:
    out = tmp_path / "report.json"
    args = ["evaluate", str(gen), "--reference", str(ref), "--embedding", "loudness", "--tagger", "loudness"]
    assert main([*args, "--cache", str(tmp_path / "cache"), "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_the_reference_against_itself_scores_zero_and_others_more(sets, capsys):
    gen, ref, tmp_path = sets
    report = _run(gen, ref, tmp_path, "--per-clip")
    assert report["metrics"]["fd_loudness"] == pytest.approx(0.0, abs=1e-9)
    assert abs(report["metrics"]["kl_loudness"]) < 1e-5
    assert report["clips"] == {"generated": 4, "reference": 4, "pairs": 4}
    assert [row["prompt"] for row in report["per_clip"]] == CAPTIONS
    assert "| fd_loudness |" in capsys.readouterr().out
    for i in range(4):  # the captions shuffled: the same sounds, each under its neighbour's caption
        _clip(gen / f"g{i}.wav", (i + 1) % 4)
    shuffled = _run(gen, ref, tmp_path)
    # A whole-set FD cannot see a shuffle (the set is the same); the paired KL can.
    assert shuffled["metrics"]["fd_loudness"] < 1e-6 and shuffled["metrics"]["kl_loudness"] > 0.01
    for i in range(4):  # other sounds altogether
        _clip(gen / f"g{i}.wav", 2, seed=i)
    assert _run(gen, ref, tmp_path)["metrics"]["fd_loudness"] > 1e-3


def test_without_pairs_kl_is_skipped_with_its_reason(sets):
    gen, ref, tmp_path = sets
    for i in range(4):
        (gen / f"g{i}.wav.json").write_text(json.dumps({"prompt": f"something else {i}"}))
    report = _run(gen, ref, tmp_path)
    assert "kl_loudness" not in report["metrics"]
    assert report["skipped"] == {"kl_loudness": "no generated prompt is the caption of a reference clip"}


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda g, r: [p.unlink() for p in g.iterdir()], "no audio files in"),
        (lambda g, r: (g / "g0.wav").write_text("not audio"), "g0.wav: "),
        (lambda g, r: (g / "g1.wav.json").write_text("{}"), "g1.wav.json has no prompt"),
        (lambda g, r: (r / "metadata.jsonl").unlink(), "no --captions given and no metadata.jsonl"),
        (lambda g, r: [p.unlink() for p in list(g.iterdir()) if not p.name.startswith("g0")], "at least 2 generated"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(sets, capsys, break_it, message):
    gen, ref, tmp_path = sets
    break_it(gen, ref)
    args = ["evaluate", str(gen), "--reference", str(ref), "--embedding", "loudness", "--cache", str(tmp_path / "c")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ssmttm: error:") and message in err and len(err.splitlines()) == 1, err


def test_an_unknown_model_names_the_known_ones(sets, capsys):
    gen, ref, _ = sets
    assert main(["evaluate", str(gen), "--reference", str(ref), "--embedding", "vggish7"]) == 2
    assert "unknown embedding or tagger 'vggish7'; choose one of: musicnn" in capsys.readouterr().err


def test_musicnn_evaluates_real_audio_offline(sets):
    """The default model on short clips: finite, FD 0 against itself, cached on the second run."""
    gen, ref, tmp_path = sets
    args = ["evaluate", str(gen), "--reference", str(ref), "--cache", str(tmp_path / "cache")]
    assert main([*args, "--out", str(tmp_path / "a.json")]) == 0
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["settings"]["embedding"].startswith("musicnn-MTT_musicnn")
    assert report["metrics"]["fd_musicnn"] == pytest.approx(0.0, abs=1e-6)
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_prompts_out_writes_the_reference_captions_for_generate(sets, capsys):
    _, ref, tmp_path = sets
    prompts = tmp_path / "prompts.txt"
    assert main(["evaluate", "--reference", str(ref), "--prompts-out", str(prompts)]) == 0
    assert prompts.read_text().splitlines() == CAPTIONS
    assert main(["evaluate", "--reference", str(ref)]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err


def test_a_synthetic_reference_adds_the_adherence_scores(sets, monkeypatch):
    """Where the reference carries the corpus's attributes, with each clip's measures in its row;
    the metric itself is test_adherence's (here the codec's features are stubbed by a clip's kind)."""
    gen, ref, tmp_path = sets
    records = [json.loads(line) for line in (ref / "metadata.jsonl").read_text().splitlines()]
    styles, leads = ["funk", "jazz", "jazz", "funk"], ["piano", "piano", "organ", "organ"]
    lines = [json.dumps({**r, "style": s, "lead": ld}) + "\n" for r, s, ld in zip(records, styles, leads, strict=True)]
    (ref / "metadata.jsonl").write_text("".join(lines))
    (gen / "g3.wav.json").write_text(json.dumps({"prompt": CAPTIONS[3] + " at 120 BPM"}))  # unpaired, for tempo

    class Measures:  # as ClipMeasures, once per file; features: the loudness windows' mean
        codec = None

        def __init__(self):
            self.features_of, self.tempo_of, self.memo = [], [], {}

        def features(self, clip, audio=None):
            if clip.path not in self.memo:
                assert audio is not None, "evaluate passes the audio it decoded"
                self.features_of.append(clip.path.name)
                self.memo[clip.path] = Loudness().embeddings(np.atleast_2d(audio[0]).mean(axis=0)).mean(axis=0)
            return self.memo[clip.path]

        def tempo(self, clip, audio=None):
            assert audio is not None
            self.tempo_of.append(clip.path.name)
            return 117.0

    made = []
    monkeypatch.setattr(evaluate_module, "ClipMeasures", lambda: made.append(Measures()) or made[-1])
    report = _run(gen, ref, tmp_path, "--per-clip")
    assert report["metrics"]["adherence_style_accuracy"] == 1.0  # the same audio as its references
    assert report["metrics"]["adherence_tempo_error_bpm"] == 3.0
    assert report["clips"]["adherence_paired_clips"] == 3 and report["clips"]["adherence_tempo_clips"] == 1
    rows = report["per_clip"]
    assert rows[0]["style_predicted"] == rows[0]["style_asked"] == "funk" and "tempo_bpm" not in rows[0]
    assert rows[3]["tempo_bpm"] == 117.0 and rows[3]["stated_bpm"] == 120.0 and "style_asked" not in rows[3]
    assert "kl" in rows[0] and "kl" not in rows[3]  # the fourth prompt pairs with no reference caption
    # each reference file measured once (in the reference pass), each paired generated clip once
    assert sorted(made[0].features_of) == ["g0.wav", "g1.wav", "g2.wav", "r0.wav", "r1.wav", "r2.wav", "r3.wav"]
    assert made[0].tempo_of == ["g3.wav"]


def test_each_file_is_decoded_once_and_a_joint_model_runs_once(sets, monkeypatch):
    """A model that is embedding and tagger gives both from one pass; every file is read once, the
    reference set's again only when its statistics are not cached."""
    gen, ref, tmp_path = sets
    passes, reads = [], []

    class Joint(Loudness):
        def embeddings(self, wav):
            passes.append("embeddings")
            return Loudness.embeddings(self, wav)

        def logits(self, wav):
            passes.append("logits")
            return 10 * Loudness.embeddings(self, wav)

        def embeddings_and_logits(self, wav):
            passes.append("both")
            emb = Loudness.embeddings(self, wav)
            return emb, 10 * emb

    real_load = evaluate_module.load_audio
    monkeypatch.setattr(evaluate_module, "load_audio", lambda path: reads.append(path.name) or real_load(path))
    monkeypatch.setitem(models.MODELS, "loudness", Joint)
    report = _run(gen, ref, tmp_path, "--per-clip")
    assert sorted(reads) == sorted([f"g{i}.wav" for i in range(4)] + [f"r{i}.wav" for i in range(4)])
    assert passes == ["both"] * 8  # every clip, generated or reference, is in a pair
    assert abs(report["metrics"]["kl_loudness"]) < 1e-5
    reads.clear()
    passes.clear()
    _run(gen, ref, tmp_path)  # the reference statistics now cached: the references read for KL only
    assert passes == ["logits"] * 4 + ["both"] * 4 and len(reads) == 8
    (gen / "g0.wav.json").write_text(json.dumps({"prompt": "unpaired"}))
    reads.clear()
    passes.clear()
    _run(gen, ref, tmp_path)
    assert "r0.wav" not in reads and sorted(passes) == ["both"] * 3 + ["embeddings"] + ["logits"] * 3


def test_the_report_names_the_code_that_made_it(sets):
    from ssmttm import __version__
    from ssmttm.provenance import git_commit

    gen, ref, tmp_path = sets
    report = _run(gen, ref, tmp_path)
    assert report["ssmttm_version"] == __version__
    assert report["git_commit"] == git_commit()


def test_clap_scores_each_clip_against_its_prompt(sets, tmp_path_factory):
    from test_eval_models import _save_clap

    gen, ref, tmp_path = sets
    clap = _save_clap(tmp_path_factory.mktemp("clap"))
    report = _run(gen, ref, tmp_path, "--clap", str(clap))
    assert -1.0 <= report["metrics"]["clap_score"] <= 1.0
    assert report["settings"]["clap"] == f"clap-{clap.name}"


def test_fad_inf_is_reported_when_asked(sets):
    gen, ref, tmp_path = sets
    report = _run(gen, ref, tmp_path, "--fad-inf", "5")
    assert np.isfinite(report["metrics"]["fd_inf_loudness"])

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
    """Where the reference carries the corpus's attributes; the metric itself is test_adherence's."""
    gen, ref, tmp_path = sets
    records = [json.loads(line) for line in (ref / "metadata.jsonl").read_text().splitlines()]
    lines = [json.dumps({**r, "style": "funk", "lead": "piano"}) + "\n" for r in records]
    (ref / "metadata.jsonl").write_text("".join(lines))
    seen = []

    def fake(generated, reference, progress=False):
        seen.append((len(generated), len(reference)))
        return {"style_accuracy": 0.75, "tempo_error_bpm": float("nan"), "paired_clips": 4}

    monkeypatch.setattr(evaluate_module, "synthetic_adherence", fake)
    report = _run(gen, ref, tmp_path)
    assert seen == [(4, 4)]
    assert report["metrics"]["adherence_style_accuracy"] == 0.75
    assert report["clips"]["adherence_paired_clips"] == 4
    assert report["skipped"]["adherence_tempo_error_bpm"] == "no generated clip to score"


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

"""CLAP and AST behind the `ClipModel` interface, on tiny random checkpoints saved to a folder: shapes,
the CLAP score once a tiny CLAP is taught two pairs, fusion, and one fast error line offline."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch

from ssmttm.eval.models import ModelError, load_model, windows

RATE = 8000  # the tiny CLAP's; AST's extractor computes 16 kHz frames
WORDS = ["<s>", "<pad>", "</s>", "<unk>", "a", "low", "hum", "high", "whistle"]
PROMPTS = ["a low hum", "a high whistle"]


def _tokenizer():
    """A word-level tokenizer of `WORDS`, built offline, with RoBERTa's special tokens."""
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def _save_clap(folder, fusion: bool = False):
    """A tiny CLAP with 1 s windows at 8 kHz (101 frames of 16 mels), random weights, and its processor."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor

    audio = dict(
        spec_size=64, num_mel_bins=16, window_size=4, depths=[1, 1], num_attention_heads=[1, 2],
        patch_embeds_hidden_size=8, hidden_size=16, num_hidden_layers=2, enable_fusion=fusion,
        fusion_type="aff_2d" if fusion else None,
    )  # fmt: skip
    text = dict(
        vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=8)).save_pretrained(folder)
    extractor = ClapFeatureExtractor(
        feature_size=16, sampling_rate=RATE, hop_length=80, max_length_s=1, fft_window_size=256, frequency_max=4000
    )
    ClapProcessor(feature_extractor=extractor, tokenizer=_tokenizer()).save_pretrained(folder)
    return folder


def _tone(hz: float, seconds: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    noise = 0.01 * np.random.default_rng(seed).normal(size=t.size)
    return (0.5 * np.sin(2 * np.pi * hz * t) + noise).astype(np.float32)


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    return _save_clap(tmp_path_factory.mktemp("clap"))


def test_windows_tile_the_clip_and_the_last_ends_at_its_end():
    wav = np.arange(25.0)
    parts = windows(wav, 10)
    assert [p[0] for p in parts] == [0, 10, 15] and all(len(p) == 10 for p in parts)
    assert parts[-1][-1] == 24
    assert [len(p) for p in windows(wav, 25)] == [25] and [len(p) for p in windows(wav, 40)] == [25]


def test_clap_embeds_windows_of_unit_length(clap_dir):
    model = load_model(f"clap:{clap_dir}")
    assert model.id == f"clap-{clap_dir.name}" and model.sample_rate == RATE
    emb = model.embeddings(_tone(200, 2.5))  # windows at 0, 1 and 1.5 s
    assert emb.shape == (3, 8) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert model.embeddings(_tone(200, 0.3)).shape == (1, 8)  # shorter than a window: one, padded
    with pytest.raises(ModelError, match="CLAP is not a tagger"):
        model.logits(_tone(200, 1))


def test_fused_clap_reads_four_channels_and_is_deterministic(tmp_path):
    from ssmttm.eval.clap import ClapModelAudio

    model = ClapModelAudio(str(_save_clap(tmp_path, fusion=True)))
    assert model.fusion
    seen = []
    forward = model.model.get_audio_features
    model.model.get_audio_features = lambda **kw: seen.append(kw) or forward(**kw)
    wav = _tone(300, 1.6)
    first = model.embeddings(wav)
    assert first.shape == (2, 8)
    assert seen[0]["input_features"].shape[:2] == (2, 4) and not seen[0]["is_longer"].any()
    np.testing.assert_array_equal(first, model.embeddings(wav))  # no window marked "longer" at random


def test_clap_score_prefers_the_matched_pairs_once_taught(clap_dir):
    from ssmttm.eval.clap import ClapModelAudio, clap_score

    model = ClapModelAudio(str(clap_dir))
    hum, whistle = _tone(150, 1.0), _tone(3000, 1.0, seed=1)
    mean, per_clip = clap_score(model, PROMPTS, [hum, whistle])
    assert np.isfinite(mean) and per_clip.shape == (2,) and np.all(np.abs(per_clip) <= 1 + 1e-6)
    _teach(model, PROMPTS, [hum, whistle])
    matched, per_matched = clap_score(model, PROMPTS, [hum, whistle])
    swapped, per_swapped = clap_score(model, PROMPTS, [whistle, hum])
    assert np.all(per_matched > per_swapped) and matched > swapped + 0.3
    unseen = [_tone(150, 1.7, seed=5), _tone(3000, 1.7, seed=6)]  # two windows each, other noise
    assert clap_score(model, PROMPTS, unseen)[0] > clap_score(model, PROMPTS, unseen[::-1])[0] + 0.3
    assert matched == pytest.approx(per_matched.mean())
    with pytest.raises(ModelError, match="got 2 prompts and 1 clips"):
        clap_score(model, PROMPTS, [hum])


def _teach(model, prompts: list[str], wavs: list[np.ndarray], steps: int = 40) -> None:
    """A few steps of CLAP's own contrastive loss on these pairs, on the inputs `ClapModelAudio` makes."""
    clap = model.model.train().requires_grad_(True)
    text = model.processor.tokenizer(prompts, padding=True, return_tensors="pt")
    audio = model.processor.feature_extractor(wavs, sampling_rate=RATE, truncation="rand_trunc", return_tensors="pt")
    opt = torch.optim.Adam(clap.parameters(), lr=3e-3)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny backward on a busy machine: 0.3 s on one thread, 10-20 s on two
    try:
        for _ in range(steps):
            out = clap(
                input_ids=text["input_ids"],
                attention_mask=text["attention_mask"],
                input_features=audio["input_features"],
                is_longer=torch.zeros(len(wavs), 1, dtype=torch.bool),
                return_loss=True,
            )
            opt.zero_grad()
            out.loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    clap.eval().requires_grad_(False)


def test_ast_tags_each_window(tmp_path):
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    labels = {i: f"label{i}" for i in range(5)}
    config = ASTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_mel_bins=16,
        max_length=64, id2label=labels, label2id={v: k for k, v in labels.items()},
    )  # fmt: skip
    torch.manual_seed(0)
    ASTForAudioClassification(config).save_pretrained(tmp_path)
    ASTFeatureExtractor(num_mel_bins=16, max_length=64).save_pretrained(tmp_path)
    model = load_model(f"ast:{tmp_path}")
    assert model.id == f"ast-{tmp_path.name}" and model.sample_rate == 16000
    assert model.window == 400 + 160 * 63  # 64 frames of 25 ms every 10 ms
    wav = _tone(440, 1.5, rate=16000)  # 0.655 s windows at 0, 0.655 and 0.845 s
    logits, emb = model.logits(wav), model.embeddings(wav)
    assert logits.shape == (3, 5) and emb.shape == (3, 16) and np.isfinite(logits).all()
    assert model.logits(wav[:4000]).shape == (1, 5)
    assert model.labels == list(labels.values())


@pytest.mark.parametrize("name", ["clap:nobody-here/no-clap", "ast:nobody-here/no-ast"])
def test_a_missing_hub_id_offline_is_one_line_within_2s(name):
    start = time.perf_counter()
    with pytest.raises(ModelError) as err:
        load_model(name)
    elapsed = time.perf_counter() - start
    message = str(err.value)
    assert elapsed < 2, f"{elapsed:.2f} s"
    assert "\n" not in message and "HF_HUB_OFFLINE=1" in message and "hf download nobody-here/" in message


@pytest.mark.parametrize("name", ["clap", "ast"])
def test_the_defaults_offline_without_weights_say_how_to_bring_them(name):
    from ssmttm.hub import cached_config

    default = {"clap": "laion/larger_clap_music", "ast": "MIT/ast-finetuned-audioset-10-10-0.4593"}[name]
    if cached_config(default) is not None:
        pytest.skip(f"{default} is in the Hugging Face cache")
    start = time.perf_counter()
    with pytest.raises(ModelError, match=re.escape(f"hf download {default} ")):
        load_model(name)
    assert time.perf_counter() - start < 2


def test_bad_sources_are_one_line_errors(tmp_path):
    with pytest.raises(ModelError, match=r"has no config\.json"):
        load_model(f"clap:{tmp_path}")
    with pytest.raises(ModelError, match="does not exist"):
        load_model(f"ast:{tmp_path / 'missing'}")
    with pytest.raises(ModelError, match="neither a local folder nor a hub id"):
        load_model("clap:larger")
    with pytest.raises(ModelError, match="choose one of: musicnn, musicnn-msd, clap, ast"):
        load_model("openl3")


def test_evaluate_reads_fd_clap_and_kl_ast(clap_dir, tmp_path, capsys):
    import json

    import soundfile as sf
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    from ssmttm.cli import main

    ast_dir = tmp_path / "ast"
    config = ASTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_mel_bins=16, max_length=64
    )
    ASTForAudioClassification(config).save_pretrained(ast_dir)
    ASTFeatureExtractor(num_mel_bins=16, max_length=64).save_pretrained(ast_dir)
    ref, gen = tmp_path / "ref", tmp_path / "gen"
    ref.mkdir()
    gen.mkdir()
    captions = ["a low hum", "a high whistle", "low whistle"]
    for i, (hz, caption) in enumerate(zip([150, 3000, 700], captions, strict=True)):
        sf.write(ref / f"r{i}.wav", _tone(hz, 1.5, seed=i), RATE)
        sf.write(gen / f"g{i}.wav", _tone(hz, 1.5, seed=i + 10), RATE)
        (gen / f"g{i}.wav.json").write_text(json.dumps({"prompt": caption}))
    records = [json.dumps({"file": f"r{i}.wav", "caption": c}) + "\n" for i, c in enumerate(captions)]
    (ref / "metadata.jsonl").write_text("".join(records))
    out = tmp_path / "report.json"
    args = ["--embedding", f"clap:{clap_dir}", "--tagger", f"ast:{ast_dir}", "--cache", str(tmp_path / "cache")]
    assert main(["evaluate", str(gen), "--reference", str(ref), *args, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {"fd_clap", "kl_ast", "kl_ast_reverse"} <= set(report["metrics"])
    assert report["settings"] == {"embedding": f"clap-{clap_dir.name}", "tagger": "ast-ast"}
    assert all(np.isfinite(v) for v in report["metrics"].values())

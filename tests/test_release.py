"""Importing the authors' checkpoints: the Lightning file end to end, refusals that name the key or
run nothing, a stage-1 (K=1) model, the release's text path, and generation to a wav file.

Logit parity with the authors' own code, through the importer, is in test_golden.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import soundfile as sf
import torch
from conftest import save_release_checkpoint, save_tiny_dac
from safetensors.torch import load_file

from ssmttm.backbones import BackboneConfig
from ssmttm.backbones.mamba2 import Mamba2Config
from ssmttm.cli import main
from ssmttm.codecs import load_codec
from ssmttm.conditioning import Conditioning
from ssmttm.generation.pipeline import GenerationError, TextToMusic
from ssmttm.lm import LMConfig, MusicLM
from ssmttm.presets import load_preset
from ssmttm.pretrained import PretrainedConfig, load_pretrained, read_config
from ssmttm.release import ReleaseShape, import_release, infer_shape, lm_config
from ssmttm.release.layout import to_release
from ssmttm.text import EmbeddingCache, TextEncoderError, load_text_encoder
from ssmttm.text.release import FILL_ID, RELEASE_LENGTH


def golden(golden_dir: Path) -> tuple[dict, dict, dict]:
    tensors = load_file(golden_dir / "release_simba_k4_golden.safetensors")
    config = json.loads((golden_dir / "release_simba_k4_golden.json").read_text())["config"]
    weights = {k.removeprefix("weights."): v for k, v in tensors.items() if k.startswith("weights.")}
    return tensors, config, weights


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def dac_1024_dir(tmp_path_factory) -> Path:
    """A tiny random DAC with the release's 1024-entry codebooks: 16 kHz, hop 256 (62.5 frames/s)."""
    return save_tiny_dac(tmp_path_factory.mktemp("dac_1024"), codebook_size=1024, downsampling=(4, 8, 8))


@pytest.fixture(scope="module")
def release_t5(tiny_t5_dir):
    return load_text_encoder(str(tiny_t5_dir), padding="release")


@pytest.fixture
def golden_import(golden_dir, tmp_path) -> tuple[MusicLM, PretrainedConfig]:
    """The golden model imported from a Lightning checkpoint: its LM and the config.json written."""
    _, config, weights = golden(golden_dir)
    import_release(save_release_checkpoint(tmp_path / "g.ckpt", weights, config), tmp_path / "model")
    return load_pretrained(tmp_path / "model")


def with_text_mask_applied(lm: MusicLM) -> MusicLM:
    ours = MusicLM(dataclasses.replace(lm.cfg, text_mask="apply")).eval()
    ours.load_state_dict(lm.state_dict())
    return ours


# -- the file --------------------------------------------------------------------------------------


def test_lightning_checkpoint_imports_end_to_end_through_the_cli(golden_dir, tmp_path, capsys):
    tensors, config, weights = golden(golden_dir)
    ckpt = save_release_checkpoint(tmp_path / "epoch=2-step=1500.ckpt", weights, config)
    release_config = tmp_path / "config.json"
    release_config.write_text(json.dumps({"training": {"name": "x"}, "model": config, "optimizer": {}}))
    code, out, err = run_cli(
        ["import-release", "--ckpt", ckpt, "--config", release_config, "--out", tmp_path / "m"], capsys
    )
    assert code == 0, err
    assert "3 layers, d_model 64, d_state 16, 4 codebooks" in out and "2 text-encoder tensors dropped" in out
    saved = read_config(tmp_path / "m")
    assert (saved.text_encoder, saved.codec, saved.text_padding) == (
        "google/flan-t5-base",
        "descript/dac_44khz",
        "release",
    )
    assert (saved.generation.cfg_scale, saved.generation.temperature, saved.generation.top_k) == (3.0, 1.2, 250)
    assert saved.trained_steps == 1500 and saved.source == str(ckpt.resolve())
    stored = load_file(tmp_path / "m" / "model.safetensors")
    assert not any("text_encoder" in key for key in stored)
    assert {to_release(key) for key in stored} - {None} == set(weights)  # every release tensor, nothing else
    lm, _ = load_pretrained(tmp_path / "m")
    with torch.no_grad():
        logits = lm(tensors["codes"], Conditioning(tensors["text_embeddings"]))
    torch.testing.assert_close(logits, tensors["logits"], atol=1e-4, rtol=0)


def test_a_bare_state_dict_imports_too(golden_dir, tmp_path):
    _, _, weights = golden(golden_dir)
    torch.save(weights, tmp_path / "weights.pt")
    result = import_release(tmp_path / "weights.pt", tmp_path / "m", text_encoder=str(tmp_path))
    assert result.dropped == 0 and result.trained_steps is None
    assert read_config(tmp_path / "m").text_encoder == str(tmp_path.resolve())  # local folders: absolute


def _write_marker(path: str) -> None:
    Path(path).write_text("pickled code ran")


class Payload:
    """Unpickling this calls _write_marker: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_write_marker, (str(self.marker),))


@pytest.mark.parametrize("kind", ["object", "function"])
def test_pickled_code_is_refused_and_never_runs(golden_dir, tmp_path, capsys, kind):
    _, config, weights = golden(golden_dir)
    marker = tmp_path / "marker"
    extra = {"callback": Payload(marker)} if kind == "object" else {"callback": _write_marker}
    ckpt = save_release_checkpoint(tmp_path / "evil.ckpt", weights, config, **extra)
    code, out, err = run_cli(["import-release", "--ckpt", ckpt, "--out", tmp_path / "m"], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("ssmttm: error:") and "refused" in err and "_write_marker" in err
    assert not marker.exists() and not (tmp_path / "m").exists()
    if kind == "object":  # the payload is live: an unsafe load runs it
        torch.load(ckpt, weights_only=False)
        assert marker.exists()


def _without_block(weights: dict, block: int) -> dict:
    return {k: v for k, v in weights.items() if not k.startswith(f"backbone.{block}.")}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda w: _without_block(w, 1), "missing music_model.backbone.1.mamba.norm.weight"),
        (
            lambda w: {**w, "backbone.1.mamba.mamba.in_proj.weight": torch.zeros(291, 64)},
            "wrong shape: music_model.backbone.1.mamba.mamba.in_proj.weight (291, 64) (expected (290, 64))",
        ),
        (
            lambda w: {**w, "backbone.0.mamba.mamba.x_proj.weight": torch.zeros(4, 4)},
            "unexpected music_model.backbone.0.mamba.mamba.x_proj.weight",
        ),
        (lambda w: {**w, "decoder.weight": torch.zeros(4)}, "music_model.decoder.weight"),
        (lambda w: _without_block(w, 2), "layers 3 (the weights have 2)"),  # only the config can tell
    ],
    ids=["missing-block", "wrong-shape", "unexpected", "unknown", "missing-last-block"],
)
def test_incomplete_checkpoints_are_one_line_errors_naming_the_key(golden_dir, tmp_path, capsys, change, message):
    _, config, weights = golden(golden_dir)
    ckpt = save_release_checkpoint(tmp_path / "bad.ckpt", change(weights), config)
    code, _, err = run_cli(["import-release", "--ckpt", ckpt, "--out", tmp_path / "m"], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "m").exists()


def test_config_json_that_disagrees_with_the_tensors_is_refused(golden_dir, tmp_path, capsys):
    _, config, weights = golden(golden_dir)
    ckpt = save_release_checkpoint(tmp_path / "g.ckpt", weights, config)
    (tmp_path / "config.json").write_text(json.dumps({"model": {**config, "d_state": 512, "codec_layer": 1}}))
    args = ["import-release", "--ckpt", ckpt, "--config", tmp_path / "config.json", "--out", tmp_path / "m"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "codec_layer 1 (the weights have 4)" in err and "d_state 512 (the weights have 16)" in err


def test_not_a_checkpoint_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "x.ckpt").write_bytes(b"not a checkpoint")
    code, _, err = run_cli(["import-release", "--ckpt", tmp_path / "x.ckpt", "--out", tmp_path / "m"], capsys)
    assert code == 2 and err.count("\n") == 1 and "not a readable PyTorch checkpoint" in err


# Our names -> the release's, written out from paper-notes' "Release checkpoint layout" (not from
# the importer's table), to build release-layout files from a model of ours.
RELEASE_SPELLING = [
    ("backbone.layers.", "backbone."),
    ("text_proj.", "condition_linear."),
    ("text_norm.", "condition_norm."),
    ("embeddings.", "embedding."),
    ("heads.", "lm_head."),
    (".mixer_norm.", ".mamba.norm."),
    (".mixer.", ".mamba.mamba."),
    (".mlp_norm.", ".ff.norm."),
    (".mlp.fc1.", ".ff.feed_forward.0."),
    (".mlp.fc2.", ".ff.feed_forward.3."),
]


def release_spelling(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        if key == "null_embedding":  # ours only
            continue
        for a, b in RELEASE_SPELLING:
            key = key.replace(a, b, 1)
        out[key] = value
    return out


def test_a_stage_one_checkpoint_imports(tmp_path):
    cfg = LMConfig(
        num_codebooks=1,
        cardinality=1024,
        text_dim=768,
        positions="sinusoidal",
        text_mask="ignore",
        backbone=BackboneConfig(
            d_model=32, n_layers=2, mlp_hidden=64, final_norm=False, mamba2=Mamba2Config(d_state=8, headdim=16)
        ),
    )
    torch.manual_seed(3)
    direct = MusicLM(cfg).eval()
    with torch.no_grad():
        for p in direct.parameters():  # random values, not the initial ones: an ignored tensor shows
            p.normal_(0, 0.3)
    weights = release_spelling(direct.state_dict())
    ckpt = save_release_checkpoint(tmp_path / "stage1.ckpt", weights, {"layers": 2, "codec_layer": 1})
    import_release(ckpt, tmp_path / "m")
    imported, _ = load_pretrained(tmp_path / "m")
    assert imported.cfg.num_codebooks == 1 and imported.cfg.backbone.mamba2.headdim == 16
    codes, text = torch.randint(0, 1025, (2, 1, 9)), torch.randn(2, 5, 768)
    with torch.no_grad():
        torch.testing.assert_close(
            imported(codes, Conditioning(text)), direct(codes, Conditioning(text)), atol=1e-5, rtol=0
        )


def test_simba_300m_in_release_mode_is_the_release_size():
    """The sizes read off a 300m release state dict give simba-300m with the release's two settings,
    the configuration the decode benchmark times."""
    with torch.device("meta"):
        lm = MusicLM(load_preset("simba-300m"))
    shape = infer_shape(release_spelling(lm.state_dict()))
    assert shape == ReleaseShape(4, 1025, 1024, 24, 768, 2048, 512, 4, 2, 64)
    assert lm_config(shape) == load_preset("simba-300m", ["positions=sinusoidal", "text_mask=ignore"])


# -- the release's text path -----------------------------------------------------------------------


def test_release_tokens_are_right_padded_then_filled_with_id_1_up_to_60(release_t5):
    tokenizer = release_t5.tokenizer
    short, longer = "jazz", "a calm piano"
    tokens = release_t5.tokenize([short, longer, ""])
    assert tokens.ids.shape == tokens.mask.shape == (3, RELEASE_LENGTH)
    real = [tokenizer(text)["input_ids"] for text in (short, longer, "")]  # "" is </s> alone
    width = len(real[1])
    for row, ids in enumerate(real):
        expected = ids + [tokenizer.pad_token_id] * (width - len(ids)) + [FILL_ID] * (RELEASE_LENGTH - width)
        assert tokens.ids[row].tolist() == expected
        assert tokens.mask[row].tolist() == [True] * len(ids) + [False] * (RELEASE_LENGTH - len(ids))
    assert tokenizer.pad_token_id == 0 and real[2] == [1]
    long = release_t5.tokenize(["x" * 70])  # longer than 60: no fill
    assert long.ids.shape[1] == 71 and bool(long.mask.all())


def test_release_encoder_runs_t5_with_the_mask_and_keeps_every_position(release_t5):
    tokens = release_t5.tokenize(["jazz", "a calm piano"])
    emb, mask = release_t5.encode(tokens)
    assert emb.shape == (2, RELEASE_LENGTH, 768) and torch.equal(mask, tokens.mask)
    with torch.no_grad():
        masked = release_t5.model(input_ids=tokens.ids, attention_mask=tokens.mask.long()).last_hidden_state
        unmasked = release_t5.model(input_ids=tokens.ids).last_hidden_state
    torch.testing.assert_close(emb, masked)
    assert (emb[0, :5] - unmasked[0, :5]).abs().max() > 1e-3  # so the mask did reach the encoder


def test_release_padding_is_t5_only_and_not_cached(release_t5, tmp_path):
    with pytest.raises(TextEncoderError, match="not a T5 encoder"):
        load_text_encoder("minilm", padding="release")
    with pytest.raises(TextEncoderError, match="unknown text padding"):
        load_text_encoder("minilm", padding="right")
    with pytest.raises(TextEncoderError, match="needs left padding"):
        EmbeddingCache(tmp_path).embed(release_t5, ["jazz"])


def test_lm_takes_every_padded_position_as_in_the_release(golden_import, release_t5):
    golden_lm = golden_import[0]
    emb, mask = release_t5.embed(["jazz"])  # positions 5.. are padding (mask 0)
    changed = emb.clone()
    changed[0, 30] += 1.0
    with torch.no_grad():
        logits, _ = golden_lm.prefill(Conditioning(emb, mask))
        moved = golden_lm.prefill(Conditioning(changed, mask))[0]
        assert (logits - moved).abs().max() > 1e-4  # the release's model sees padding
        ours = with_text_mask_applied(golden_lm)
        torch.testing.assert_close(
            ours.prefill(Conditioning(emb, mask))[0], ours.prefill(Conditioning(changed, mask))[0]
        )  # ours does not


def test_pipeline_feeds_all_60_positions_and_the_padded_empty_caption(golden_import, release_t5, dac_1024_dir):
    lm, config = golden_import
    model = TextToMusic(lm, load_codec(str(dac_1024_dir), 4), release_t5, config)
    seen = []
    original = model.lm.prefill

    def spy(cond, seq=None):
        seen.append((cond.text, cond.mask))
        return original(cond, seq)

    model.lm.prefill = spy
    model.generate_codes(["jazz"], duration=0.05, seed=0)
    text, mask = seen[0]
    expected, expected_mask = release_t5.embed(["jazz", ""])  # conditional row, then the empty caption
    assert text.shape == (2, RELEASE_LENGTH, 768)
    torch.testing.assert_close(text, expected)
    assert torch.equal(mask, expected_mask)
    with pytest.raises(GenerationError, match="text_mask ignore"):
        TextToMusic(with_text_mask_applied(lm), model.codec, release_t5, config)


def test_import_then_generate_one_second_to_a_wav(golden_dir, tiny_t5_dir, dac_1024_dir, tmp_path, capsys):
    _, config, weights = golden(golden_dir)
    ckpt = save_release_checkpoint(tmp_path / "g.ckpt", weights, config)
    model_dir, wav = tmp_path / "model", tmp_path / "out.wav"
    args = [
        "import-release",
        "--ckpt",
        ckpt,
        "--out",
        model_dir,
        "--text-encoder",
        tiny_t5_dir,
        "--codec",
        dac_1024_dir,
    ]
    assert run_cli(args, capsys)[0] == 0
    code, _, err = run_cli(["generate", "upbeat jazz", "--model", model_dir, "--duration", 1, "-o", wav], capsys)
    assert code == 0, err
    audio, rate = sf.read(wav)
    assert rate == 16000 and audio.shape == (16000,) and audio.std() > 0
    sidecar = json.loads((tmp_path / "out.wav.json").read_text())
    assert sidecar["text_padding"] == "release"
    assert sidecar["sampling"] == {"cfg_scale": 3.0, "temperature": 1.2, "top_k": 250, "top_p": 0.0}

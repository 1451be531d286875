"""`data prepare --latents`: two-stage targets stored beside the tokens, their windows and statistics."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ssmttm.audio import load_audio, save_audio
from ssmttm.codecs import load_codec
from ssmttm.data.dataset import STD_FLOOR, LatentWindows, TokenWindows, crop_start, latent_statistics
from ssmttm.data.prepare import PrepareConfig, PrepareError, prepare
from ssmttm.data.shards import TokenStore

RATE = 22050
SECONDS = [3.0, 5.0, 4.0, 3.0, 5.0]  # one clip each (segments of 30 s); 2 per unit: 3 units
WINDOW = 150  # frames: between a 3 s clip (130 frames) and a 4 s one (173)


def tone(seconds, freq, seed):
    t = np.arange(int(seconds * RATE)) / RATE
    rng = np.random.default_rng(seed)
    wav = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)
    return wav[None].astype(np.float32)


def write_corpus(root: Path, seconds=SECONDS) -> Path:
    rows = []
    for k, length in enumerate(seconds):
        name = f"clip{k}.wav"
        save_audio(root / name, tone(length, 110 * (k + 2), seed=k), RATE)
        rows.append({"file": name, "caption": f"caption {k}", "song": f"song{k}"})
    (root / "meta.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def config(source: Path, out: Path, latents: bool = True, **settings) -> PrepareConfig:
    return PrepareConfig(
        source=str(source),
        out=str(out),
        codec="embedded",
        captions=str(source / "meta.jsonl"),
        validation_fraction=0.2,
        items_per_unit=2,
        latents=latents,
        **settings,
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("latent-corpus"))


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("latent-prepared") / "out"
    result = prepare(config(corpus, out))
    assert result.merge is not None and result.merge.failures == 0
    return out


@pytest.fixture(scope="module")
def codec():
    return load_codec("embedded")


def test_latents_are_stored_per_clip_aligned_with_the_tokens(prepared, corpus, codec):
    store = TokenStore(prepared)
    d = codec.latent_dim(1, codec.num_codebooks)
    assert store.has_latents and store.latent_dim == d == 89
    assert store.manifest["latents"] is True and store.manifest["codec"]["latent_dim"] == d
    assert store.manifest["settings"]["latents"] is True
    for unit in store.manifest["shards"]:
        tokens = np.load(prepared / "shards" / f"{unit}.npy")
        latents = np.load(prepared / "shards" / f"{unit}.latents.npy")
        assert latents.dtype == np.float16 and latents.shape == (d, tokens.shape[1])
        assert np.isfinite(latents).all()
    peak = 0.0
    for record in store:
        latents = store.latents(record)
        assert latents.shape == (d, record["frames"]) and isinstance(latents, np.memmap)
        peak = max(peak, float(np.abs(latents.astype(np.float32)).max()))
    assert 0.05 < peak < 2.0  # about 0.5 for these tones: far inside float16's 65504

    # One clip against a direct computation on its audio: coarse equals the tokens' codebook 0, and the
    # stored residual is two_stage_target's, rounded to float16 (relative error <= 2**-11).
    record = next(r for r in store if r["file"] == "clip1.wav")
    wav, rate = load_audio(corpus / "clip1.wav")
    target = codec.two_stage_target(torch.from_numpy(wav)[None], rate)
    tokens = store.tokens(record)
    assert np.array_equal(target.coarse[0, 0].numpy(), tokens[0].astype(np.int64))
    direct = target.residual[0].numpy()  # (D, T) float32
    stored = store.latents(record).astype(np.float32)
    assert direct.shape == stored.shape
    error = np.abs(stored - direct)
    assert (error <= 2.0**-11 * np.abs(direct) + 2.0**-24).all(), float(error.max())
    assert np.array_equal(store.latents(record), direct.astype(np.float16))  # the same computation, bit for bit


def test_a_collection_without_latents_says_to_prepare_with_latents(prepared, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "latents": False}))
    store = TokenStore(copy)
    assert not store.has_latents
    with pytest.raises(ValueError, match="prepare --latents") as err:
        store.latents(store.records[0])
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="prepare --latents"):
        LatentWindows(copy, window_frames=WINDOW)


def test_an_interrupted_prepare_resumes_to_the_same_files(prepared, corpus, tmp_path):
    copy = tmp_path / "resumed"
    shutil.copytree(prepared, copy)
    for name in ("index.jsonl", "failures.jsonl", "manifest.json"):
        (copy / name).unlink()
    (copy / "shards" / "unit-00001.json").unlink()  # killed between the latents and the .json: redone
    (copy / "shards" / "unit-00002.json").unlink()
    (copy / "shards" / "unit-00002.latents.npy").unlink()  # killed before its latents were written
    result = prepare(config(corpus, copy))
    assert (result.units_done_before, result.units_encoded) == (1, 2) and result.merge is not None
    files = sorted(p.relative_to(prepared) for p in prepared.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(copy) for p in copy.rglob("*") if p.is_file())
    for path in files:
        assert (prepared / path).read_bytes() == (copy / path).read_bytes(), path


def test_a_pool_of_workers_writes_the_same_bytes(prepared, corpus, tmp_path):
    prepare(config(corpus, tmp_path / "pool"), workers=2)
    for path in sorted((prepared / "shards").iterdir()):
        assert path.read_bytes() == (tmp_path / "pool" / "shards" / path.name).read_bytes(), path.name


def test_resuming_with_another_latents_setting_is_one_line_error(prepared, corpus, tmp_path):
    with pytest.raises(PrepareError, match="prepared with --latents; prepare into a new --out folder") as err:
        prepare(config(corpus, prepared, latents=False))
    assert "\n" not in str(err.value)
    tokens_only = tmp_path / "tokens-only"
    source = write_corpus(tmp_path / "small", seconds=[3.0])
    prepare(config(source, tokens_only, latents=False))
    assert json.loads((tokens_only / "manifest.json").read_text())["latents"] is False
    assert not list((tokens_only / "shards").glob("*.latents.npy"))
    plan = json.loads((tokens_only / "plan.json").read_text())
    del plan["settings"]["latents"]  # a folder prepared before --latents existed still resumes
    (tokens_only / "plan.json").write_text(json.dumps(plan))
    assert prepare(config(source, tokens_only, latents=False)).units_encoded == 0
    with pytest.raises(PrepareError, match="prepared without --latents; prepare into a new --out folder"):
        prepare(config(source, tokens_only, latents=True))


def test_a_codec_without_latents_is_refused_before_any_work(corpus, tmp_path, monkeypatch, codec):
    import ssmttm.data.prepare as prepare_module

    class NoLatents:
        """The embedded codec, but without a continuous side, as a codec that has none."""

        latent_layout = None

        def __getattr__(self, name):
            return getattr(codec, name)

    monkeypatch.setattr(prepare_module, "load_codec", lambda *args: NoLatents())
    with pytest.raises(PrepareError, match="has no continuous latents; prepare without --latents") as err:
        prepare(config(corpus, tmp_path / "out"))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_the_latents_file_is_written_before_the_unit_is_marked_complete(tmp_path, monkeypatch):
    import ssmttm.data.shards as shards
    import ssmttm.files as files

    written = []
    real = files.atomic_write

    def recording(path, write):
        written.append(Path(path).name)
        real(path, write)

    monkeypatch.setattr(files, "atomic_write", recording)
    monkeypatch.setattr(shards, "atomic_write", recording)
    tokens = np.zeros((4, 3), dtype=np.int64)
    shards.write_unit(tmp_path, "unit-00000", tokens, [], [], np.zeros((2, 3), dtype=np.float16))
    assert written == ["unit-00000.npy", "unit-00000.latents.npy", "unit-00000.json"]
    with pytest.raises(ValueError, match="latents must be float16"):
        shards.write_unit(tmp_path, "unit-00001", tokens, [], [], np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="latents must be float16"):
        shards.write_unit(tmp_path, "unit-00001", tokens, [], [], np.zeros((2, 4), dtype=np.float16))


def test_latent_windows_shapes_padding_mask_and_crops(prepared):
    data = LatentWindows(prepared, "train", window_frames=WINDOW)
    tokens = TokenWindows(prepared, "train", window_frames=WINDOW)
    store = TokenStore(prepared)
    assert len(data) == len(store.split("train")) == 4 and data.latent_dim == 89
    assert data.frame_rate == store.frame_rate
    padded = cropped = 0
    for index in range(len(data)):
        item, record = data[index], data.records[index]
        assert item["coarse"].shape == (WINDOW,) and item["coarse"].dtype == torch.int64
        assert item["latents"].shape == (89, WINDOW) and item["latents"].dtype == torch.float32
        assert item["frame_mask"].shape == (WINDOW,) and item["frame_mask"].dtype == torch.bool
        assert (item["caption"], item["id"]) == (record["caption"], record["id"])
        real = min(record["frames"], WINDOW)
        assert item["frames"] == real and int(item["frame_mask"].sum()) == real and item["frame_mask"][:real].all()
        start = crop_start(record["frames"], WINDOW, 0, 0, index)
        cropped += record["frames"] > WINDOW
        assert item["start_s"] == pytest.approx(record["start_s"] + start / data.frame_rate)
        clip = store.latents(record).astype(np.float32)[:, start : start + real]
        assert np.array_equal(item["latents"][:, :real].numpy(), clip)
        assert np.array_equal(item["coarse"][:real].numpy(), store.tokens(record)[0, start : start + real])
        # the same crop as the LM's windows: codebook 0 of TokenWindows' item, and its start
        other = tokens[index]
        assert other["start_s"] == item["start_s"] and other["frames"] == real
        assert torch.equal(other["codes"][0, :real], item["coarse"][:real])
        if record["frames"] < WINDOW:  # padded: token 0, zero latents, mask False
            assert (item["coarse"][real:] == 0).all() and (item["latents"][:, real:] == 0).all()
            assert not item["frame_mask"][real:].any()
            padded += 1
    assert padded and cropped  # both kinds of clip were checked


def test_latent_windows_depend_only_on_seed_epoch_and_index(prepared):
    def windows(seed, epoch, order=None):
        data = LatentWindows(prepared, window_frames=WINDOW, seed=seed)
        data.set_epoch(epoch)
        order = range(len(data)) if order is None else order
        return {i: (data[i]["start_s"], data[i]["latents"]) for i in order}

    first = windows(0, 0)
    backwards = windows(0, 0, order=reversed(range(len(first))))  # a new instance, read in another order
    assert all(first[i][0] == backwards[i][0] and torch.equal(first[i][1], backwards[i][1]) for i in first)
    assert [first[i][0] for i in first] != [v[0] for v in windows(0, 1).values()]  # the epoch moves the crops
    assert [first[i][0] for i in first] != [v[0] for v in windows(1, 0).values()]


def test_latent_statistics_match_numpy_and_floor_a_constant_channel(prepared, tmp_path):
    store = TokenStore(prepared)
    frames = np.concatenate([store.latents(r).astype(np.float64) for r in store.split("train")], axis=1)
    mean, std = latent_statistics(prepared)
    assert mean.dtype == std.dtype == np.float64 and mean.shape == std.shape == (89,)
    np.testing.assert_allclose(mean, frames.mean(axis=1), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(std, np.maximum(frames.std(axis=1), STD_FLOOR), rtol=1e-6)
    validation = np.concatenate([store.latents(r).astype(np.float64) for r in store.split("validation")], axis=1)
    np.testing.assert_allclose(latent_statistics(prepared, "validation")[0], validation.mean(axis=1), rtol=1e-6)

    copy = tmp_path / "constant"
    shutil.copytree(prepared, copy)
    for path in (copy / "shards").glob("*.latents.npy"):
        latents = np.load(path)
        latents[5] = 0.25  # channel 5 constant over every frame
        np.save(path, latents)
    mean, std = latent_statistics(copy)
    assert mean[5] == 0.25 and std[5] == STD_FLOOR == 1e-4
    assert (std > STD_FLOOR).sum() >= 80  # the other channels vary


def test_cli_prepare_with_latents(tmp_path, capsys):
    from ssmttm.cli import main

    source = write_corpus(tmp_path / "src", seconds=[3.0, 3.0])
    argv = ["data", "prepare", "--source", str(source), "--captions", str(source / "meta.jsonl")]
    argv += ["--codec", "embedded", "--out", str(tmp_path / "out"), "--latents"]
    assert main(argv) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["latents"] is True and manifest["settings"]["latents"] is True
    assert manifest["codec"]["latent_dim"] == 89
    store = TokenStore(tmp_path / "out")
    assert all(store.latents(r).shape == (89, r["frames"]) for r in store)
    assert "encoded 2 items" in capsys.readouterr().out

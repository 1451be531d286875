"""Training windows from prepared shards: deterministic per seed and epoch, padded, cropped in place."""

import json

import numpy as np
import pytest
import torch

from ssmttm.audio import save_audio
from ssmttm.data.dataset import TokenWindows
from ssmttm.data.prepare import PrepareConfig, prepare
from ssmttm.data.shards import TokenStore


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_dac_dir):
    root = tmp_path_factory.mktemp("windows")
    rng = np.random.default_rng(0)
    records = []
    for k, seconds in enumerate([0.5, 1.0, 1.0, 1.0, 0.2, 1.0]):
        name = f"clip{k}.wav"
        save_audio(
            root / "src" / name, (0.2 * rng.standard_normal((1, int(16000 * seconds)))).astype(np.float32), 16000
        )
        records.append({"file": name, "caption": f"caption {k}", "song": f"song{k}"})
    (root / "src" / "meta.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = PrepareConfig(
        source=str(root / "src"),
        out=str(root / "out"),
        codec=str(tiny_dac_dir),
        captions=str(root / "src" / "meta.jsonl"),
        segment_s=1.0,
        validation_fraction=0.2,
    )
    prepare(config)
    return root / "out"


def test_windows_are_crops_of_the_clip_or_padded_with_the_special_id(prepared):
    data = TokenWindows(prepared, "train", window_frames=1200, num_codebooks=3)
    store = TokenStore(prepared)
    assert data.pad_id == 16 and len(data) == len(store.split("train"))
    for index in range(len(data)):
        item = data[index]
        record = data.records[index]
        tokens = torch.from_numpy(store.tokens(record)[:3].astype(np.int64))
        assert item["codes"].shape == (3, 1200) and item["codes"].dtype == torch.int64
        assert item["caption"] == record["caption"]
        if record["frames"] <= 1200:  # padded on the right with the special id
            assert item["frames"] == record["frames"]
            assert torch.equal(item["codes"][:, : record["frames"]], tokens)
            assert (item["codes"][:, record["frames"] :] == 16).all()
        else:  # a crop: the window must occur in the clip at some start frame
            starts = [
                s for s in range(record["frames"] - 1200 + 1) if torch.equal(tokens[:, s : s + 1200], item["codes"])
            ]
            assert starts


def test_windows_are_deterministic_per_seed_and_epoch(prepared):
    def crops(seed, epoch):
        data = TokenWindows(prepared, "train", window_frames=500, seed=seed)
        data.set_epoch(epoch)
        return torch.stack([data[i]["codes"] for i in range(len(data))])

    assert torch.equal(crops(0, 0), crops(0, 0))
    assert not torch.equal(crops(0, 0), crops(0, 1))
    assert not torch.equal(crops(0, 0), crops(1, 0))
    data = TokenWindows(prepared, "train", window_frames=500)
    backwards = [data[i]["codes"] for i in reversed(range(len(data)))]  # read order does not matter
    assert all(torch.equal(a, b) for a, b in zip(crops(0, 0), reversed(backwards), strict=True))


def test_split_and_codebook_errors(prepared):
    assert len(TokenWindows(prepared, "validation", window_frames=100)) >= 1
    with pytest.raises(ValueError, match="no clips in split 'test'"):
        TokenWindows(prepared, "test")
    with pytest.raises(ValueError, match="cannot read 5"):
        TokenWindows(prepared, num_codebooks=5)


def test_a_folder_without_a_manifest_names_prepare_first(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `ssmttm data prepare --out"):
        TokenStore(tmp_path)

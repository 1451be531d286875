"""One rule tells a hub id from a local path, and codecs, text encoders and exported models all follow it."""

import pytest

from ssmttm.codecs import CodecError, load_codec
from ssmttm.hub import is_hub_id, is_local_path
from ssmttm.pretrained import PretrainedError, load_weights
from ssmttm.text import TextEncoderError, load_text_encoder

# "t5" in every name, so that the text side gets as far as the hub (it tells T5 from BERT by name).
HUB_IDS = ["someone/tiny-t5", "some.one/t5_v-1.1"]
PATHS = ["./someone/tiny-t5", "../someone/t5", "/no/such/t5", "~/no-such-ssmttm-folder/t5"]  # missing
NEITHER = ["tiny t5/x", "a/b/t5", "t5-nonsense"]
LOADERS = {"codec": load_codec, "text encoder": load_text_encoder, "model": load_weights}
ERRORS = (CodecError, TextEncoderError, PretrainedError)


@pytest.fixture
def empty_offline_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # whatever this machine holds


def _error(load, source: str) -> str:
    with pytest.raises(ERRORS) as err:
        load(source)
    return str(err.value)


def test_the_rule_on_its_own():
    assert all(is_hub_id(s) and not is_local_path(s) for s in HUB_IDS)
    assert all(is_local_path(s) and not is_hub_id(s) for s in PATHS)
    assert not any(is_hub_id(s) or is_local_path(s) for s in NEITHER)


@pytest.mark.parametrize("source", [*HUB_IDS, *PATHS, *NEITHER])
def test_codecs_text_encoders_and_models_take_the_same_sources_for_hub_ids(source, empty_offline_cache):
    # Only a source taken for a hub id gets as far as the (empty, offline) Hugging Face cache.
    taken = {what: "Hugging Face cache" in _error(load, source) for what, load in LOADERS.items()}
    assert taken == dict.fromkeys(LOADERS, is_hub_id(source))


def test_an_existing_folder_is_a_path_even_when_it_reads_as_a_hub_id(tmp_path, monkeypatch, empty_offline_cache):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "someone" / "tiny-t5").mkdir(parents=True)
    assert is_local_path("someone/tiny-t5") and not is_hub_id("someone/tiny-t5")
    for load in LOADERS.values():
        assert "no config.json" in _error(load, "someone/tiny-t5")  # looked into, as a folder

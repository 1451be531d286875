"""The music LM over every backbone: parallel forward, step = forward, causality, masks, CFG null."""

import pytest
import torch
from conftest import KINDS, tiny_lm

from ssmttm.backbones.base import Mixer
from ssmttm.conditioning import Conditioning
from ssmttm.lm import LMState
from ssmttm.ops import cpu_kernels

MODES = [(kind, cond) for kind in KINDS for cond in ("prefix", "cross")]
B, L, T, TEXT_DIM = 2, 5, 17, 6


def inputs(lm, batch=B, length=T, text_len=L):
    seq = torch.randint(0, lm.cfg.vocab_size, (batch, lm.cfg.num_codebooks, length))
    return seq, torch.randn(batch, text_len, TEXT_DIM)


def left_padded_mask(lengths, text_len=L):
    positions = torch.arange(text_len)
    return positions[None, :] >= text_len - torch.tensor(lengths)[:, None]


def teacher_forced(lm, seq, text, mask, split):
    """Prefill text + seq[:split], then step through the rest; logits for every column."""
    with torch.no_grad():
        logits, state = lm.prefill(Conditioning(text, mask), seq[..., :split])
        columns = [logits]
        for t in range(split, seq.shape[-1]):
            logits, state = lm.step(seq[:, :, t], state)
            columns.append(logits)
    return torch.stack(columns, dim=2), state


@pytest.mark.parametrize(("kind", "cond"), MODES)
def test_forward_shape_and_alignment(kind, cond):
    lm = tiny_lm(kind, cond)
    seq, text = inputs(lm)
    logits = lm(seq, Conditioning(text))
    assert logits.shape == (B, lm.cfg.num_codebooks, T + 1, lm.cfg.vocab_size)


@pytest.mark.parametrize(("kind", "cond"), MODES)
@pytest.mark.parametrize("split", [0, 1, 6, T])
def test_step_equals_forward(kind, cond, split):
    lm = tiny_lm(kind, cond)
    seq, text = inputs(lm)
    mask = left_padded_mask([5, 2])
    with torch.no_grad():
        full = lm(seq, Conditioning(text, mask))
    stepped, _ = teacher_forced(lm, seq, text, mask, split)
    torch.testing.assert_close(stepped, full[:, :, split:], atol=1e-4, rtol=0)


@pytest.mark.parametrize(("kind", "cond"), MODES)
def test_step_equals_forward_on_the_pure_pytorch_path(kind, cond, monkeypatch):
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    lm = tiny_lm(kind, cond)
    seq, text = inputs(lm)
    mask = left_padded_mask([5, 2])
    with torch.no_grad():
        full = lm(seq, Conditioning(text, mask))
    stepped, _ = teacher_forced(lm, seq, text, mask, 3)
    torch.testing.assert_close(stepped, full[:, :, 3:], atol=1e-4, rtol=0)


@pytest.mark.parametrize("positions", ["sinusoidal", "none"])
def test_step_equals_forward_with_release_options(positions):
    lm = tiny_lm("simba", positions=positions, text_mask="ignore")
    seq, text = inputs(lm)
    with torch.no_grad():
        full = lm(seq, Conditioning(text))
    stepped, _ = teacher_forced(lm, seq, text, None, 4)
    torch.testing.assert_close(stepped, full[:, :, 4:], atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_is_parallel(kind, monkeypatch):
    """`forward` over 256 positions never falls back on the recurrent step."""

    def refuse(*args, **kwargs):
        raise AssertionError("forward called step")

    for cls in _subclasses(Mixer):
        monkeypatch.setattr(cls, "step", refuse)
    lm = tiny_lm(kind)
    seq, text = inputs(lm, length=256)
    with torch.no_grad():
        assert lm(seq, Conditioning(text)).shape[2] == 257
        lm.prefill(Conditioning(text), seq)


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


@pytest.mark.parametrize(("kind", "cond"), MODES)
def test_batch_members_are_independent(kind, cond):
    lm = tiny_lm(kind, cond)
    seq, text = inputs(lm)
    mask = left_padded_mask([5, 3])
    both, _ = teacher_forced(lm, seq, text, mask, 3)
    alone, _ = teacher_forced(lm, seq[1:], text[1:], mask[1:], 3)
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("kind", "cond"), MODES)
def test_causality(kind, cond):
    lm = tiny_lm(kind, cond)
    seq, text = inputs(lm)
    changed = seq.clone()
    changed[:, :, 9:] = torch.randint(0, lm.cfg.vocab_size, changed[:, :, 9:].shape)
    with torch.no_grad():
        a, b = lm(seq, Conditioning(text)), lm(changed, Conditioning(text))
    torch.testing.assert_close(a[:, :, :10], b[:, :, :10], atol=0, rtol=0)
    assert not torch.allclose(a[:, :, 10:], b[:, :, 10:])


@pytest.mark.parametrize(("kind", "cond"), MODES)
def test_masked_text_positions_change_no_output(kind, cond):
    lm = tiny_lm(kind, cond)
    seq, text = inputs(lm)
    mask = left_padded_mask([3, 1])
    scrambled = torch.where(mask[..., None], text, torch.randn_like(text) * 100)
    with torch.no_grad():
        torch.testing.assert_close(
            lm(seq, Conditioning(text, mask)), lm(seq, Conditioning(scrambled, mask)), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize(("kind", "cond"), MODES)
def test_left_padded_batch_gives_each_caption_run_alone(kind, cond):
    lm = tiny_lm(kind, cond)
    seq, text = inputs(lm)
    lengths = [2, 4]
    mask = left_padded_mask(lengths)
    with torch.no_grad():
        batched = lm(seq, Conditioning(text, mask))
        for row, n in enumerate(lengths):
            alone = lm(seq[row : row + 1], Conditioning(text[row : row + 1, L - n :]))
            torch.testing.assert_close(batched[row : row + 1], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["simba", "mamba2", "mamba", "simba3", "mamba3"])
def test_masked_positions_leave_the_ssm_state_as_if_absent(kind):
    """Every tensor of the state: the SSM state and the convolution window, or Mamba-3's phase and
    its previous k and v."""
    lm = tiny_lm(kind)
    seq, text = inputs(lm, batch=1)
    _, padded = teacher_forced(
        lm, seq, torch.cat([torch.randn(1, 3, TEXT_DIM), text], 1), left_padded_mask([L], text_len=L + 3), T
    )
    _, alone = teacher_forced(lm, seq, text, None, T)
    for a, b in zip(padded.backbone.layers, alone.backbone.layers, strict=True):
        for got, want in zip(a.mixer.tensors(), b.mixer.tensors(), strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cond", ["prefix", "cross"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_step_with_fewer_rows_than_its_state_is_refused(kind, cond):
    """The state's own check, before any cross-attention: one token row would broadcast over two."""
    lm = tiny_lm(kind, cond)
    with torch.no_grad():
        _, state = lm.prefill(Conditioning(torch.randn(2, L, TEXT_DIM)))
        with pytest.raises(ValueError, match="decoding step: 1 input rows on a state of 2"):
            lm.step(torch.zeros(1, lm.cfg.num_codebooks, dtype=torch.long), state)


@pytest.mark.parametrize(("kind", "cond"), MODES)
def test_empty_and_fully_masked_captions_are_the_learned_null(kind, cond):
    lm = tiny_lm(kind, cond)
    seq, text = inputs(lm, batch=1)
    with torch.no_grad():
        empty = lm(seq, Conditioning(text[:, :0]))
        masked = lm(seq, Conditioning(text, torch.zeros(1, L, dtype=torch.bool)))
        conditioned = lm(seq, Conditioning(text))
        lm.null_embedding.add_(1.0)
        moved = lm(seq, Conditioning(text[:, :0]))
    torch.testing.assert_close(empty, masked, atol=1e-5, rtol=0)
    assert not torch.allclose(empty, conditioned)
    assert not torch.allclose(empty, moved)  # the null condition is the learned embedding


@pytest.mark.parametrize("kind", KINDS)
def test_caption_dropout_gives_the_null_condition(kind):
    lm = tiny_lm(kind, caption_dropout=1.0, token_dropout=0.0)
    seq, text = inputs(lm)
    with torch.no_grad():
        null = lm(seq, Conditioning(text[:, :0]))
        dropped = lm.train()(seq, Conditioning(text))
    torch.testing.assert_close(dropped, null, atol=1e-5, rtol=0)


def test_token_dropout_masks_single_tokens_but_never_the_last():
    lm = tiny_lm("simba", caption_dropout=0.0, token_dropout=0.5).train()
    mask = torch.ones(4000, L, dtype=torch.bool)
    kept = lm._guidance_dropout(mask)
    assert kept[:, -1].all()
    assert 0.45 < 1 - kept[:, :-1].float().mean().item() < 0.55


def test_states_index_and_concatenate_along_the_batch():
    lm = tiny_lm("simba")
    seq, text = inputs(lm)
    with torch.no_grad():
        _, state = lm.prefill(Conditioning(text), seq[..., :4])
        rebuilt = LMState.cat([state.select([1]), state.select([0])])
        a, _ = lm.step(seq[:, :, 4], state.clone())
        b, _ = lm.step(seq.flip(0)[:, :, 4], rebuilt)
    torch.testing.assert_close(a, b.flip(0))


def test_loss_skips_special_tokens_and_sums_codebooks():
    lm = tiny_lm("simba", label_smoothing=0.0)
    codes = torch.randint(0, lm.cfg.cardinality, (2, 3, 6))
    codes[1, :, 4:] = lm.cfg.special_token  # padding of a shorter clip
    text = torch.randn(2, L, TEXT_DIM)
    out = lm.compute_loss(codes, Conditioning(text))
    assert out.num_tokens.tolist() == [10, 10, 10]
    torch.testing.assert_close(out.loss, out.per_codebook.sum())
    seq = lm.pattern.build(codes)
    logits = lm(seq[..., :-1], Conditioning(text))
    for k in range(3):
        real = seq[:, k] != lm.cfg.special_token
        manual = torch.nn.functional.cross_entropy(logits[:, k][real], seq[:, k][real])
        torch.testing.assert_close(out.per_codebook[k], manual)


def test_label_smoothing_is_applied():
    codes = torch.randint(0, 11, (2, 3, 6))
    text = torch.randn(2, L, TEXT_DIM)
    plain = tiny_lm("simba", label_smoothing=0.0).compute_loss(codes, Conditioning(text)).loss
    smoothed = tiny_lm("simba", label_smoothing=0.1).compute_loss(codes, Conditioning(text)).loss
    assert not torch.allclose(plain, smoothed)

"""The generator: prefill then step, batched CFG, sampling, and the pattern's bookkeeping."""

import dataclasses

import pytest
import torch
from conftest import KINDS, tiny_lm

from ssmttm.backbones.mamba2 import Mamba2BlockKernel
from ssmttm.backbones.mamba3 import Mamba3BlockKernel
from ssmttm.conditioning import Conditioning
from ssmttm.generation import Generator, SamplingConfig
from ssmttm.generation.cuda_graph import GraphedStep
from ssmttm.generation.sampling import classifier_free_guidance, sample
from ssmttm.ops import cpu_kernels

L, TEXT_DIM = 4, 6


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pattern", ["delay", "parallel"])
def test_greedy_generation_is_the_argmax_of_the_parallel_forward(kind, pattern):
    lm = tiny_lm(kind, pattern=pattern)
    text = torch.randn(2, L, TEXT_DIM)
    codes = Generator(lm).generate(Conditioning(text), 9, sampling=SamplingConfig(temperature=0, cfg_scale=1))
    assert codes.shape == (2, 3, 9)
    seq = lm.pattern.build(codes)
    with torch.no_grad():
        logits = lm(seq[..., :-1], Conditioning(text))
    logits[..., lm.cfg.special_token] = -torch.inf
    valid = lm.pattern.valid_mask(9)
    assert torch.equal(logits.argmax(-1)[:, valid], seq[:, valid])


def test_special_ids_are_never_emitted_as_audio():
    lm = tiny_lm("simba")
    with torch.no_grad():
        for head in lm.heads:
            head.weight[lm.cfg.special_token] = 50 * head.weight[:-1].abs().max()
    text = torch.randn(3, L, TEXT_DIM)
    for temperature in (0.0, 1.0):
        codes = Generator(lm).generate(Conditioning(text), 12, sampling=SamplingConfig(temperature=temperature), seed=0)
        assert (codes < lm.cfg.cardinality).all()


def test_cfg_runs_both_branches_as_one_batch_and_matches_separate_runs():
    lm = tiny_lm("mamba2")
    text = torch.randn(2, L, TEXT_DIM)
    mask = torch.tensor([[False, True, True, True], [True, True, True, True]])
    scale = 2.5
    columns = list(
        Generator(lm).columns(Conditioning(text, mask), 6, sampling=SamplingConfig(temperature=0, cfg_scale=scale))
    )
    with torch.no_grad():  # the same decode with the two branches run separately
        cond, cond_state = lm.prefill(Conditioning(text, mask))
        uncond, uncond_state = lm.prefill(Conditioning(text[:, :0]))
        valid = lm.pattern.valid_mask(6)
        for s, column in enumerate(columns):
            guided = classifier_free_guidance(cond, uncond, scale)
            guided[..., lm.cfg.special_token] = -torch.inf
            expected = torch.where(valid[:, s], guided.argmax(-1), lm.cfg.special_token)
            assert torch.equal(column, expected)
            cond, cond_state = lm.step(column, cond_state)
            uncond, uncond_state = lm.step(column, uncond_state)


def test_sampling_is_reproducible_per_seed_and_varies_across_seeds():
    lm = tiny_lm("transformer")
    text = torch.randn(2, L, TEXT_DIM)
    generator = Generator(lm)
    a = generator.generate(Conditioning(text), 10, sampling=SamplingConfig(temperature=1.5), seed=3)
    b = generator.generate(Conditioning(text), 10, sampling=SamplingConfig(temperature=1.5), seed=3)
    c = generator.generate(Conditioning(text), 10, sampling=SamplingConfig(temperature=1.5), seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_temperature_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([0.7, 0.2, 0.1]))
    draws = sample(logits.expand(20000, 3), 1.0, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=3).float() / draws.numel()
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.02, rtol=0)
    sharp = sample(logits.expand(20000, 3), 0.25, torch.Generator().manual_seed(0))
    assert (sharp == 0).float().mean() > 0.95
    assert torch.equal(sample(logits[None], 0.0), torch.tensor([0]))


def test_an_out_of_range_sampling_setting_is_named_alone():
    for fields, message in [
        ({"cfg_scale": -1.0}, "sampling cfg_scale -1 is out of range: must be >= 0 (1 = no guidance)"),
        ({"temperature": -0.5, "top_k": 5}, "sampling temperature -0.5 is out of range: must be >= 0 (0 = greedy)"),
        ({"top_k": -3}, "sampling top_k -3 is out of range: must be >= 0 (0 = off)"),
        ({"top_p": 1.5}, "sampling top_p 1.5 is out of range: must be in [0, 1] (0 = off)"),
        ({"top_p": float("nan")}, "sampling top_p nan is out of range: must be in [0, 1] (0 = off)"),
    ]:
        with pytest.raises(ValueError) as err:
            SamplingConfig(**fields)
        assert str(err.value) == message
    assert SamplingConfig(temperature=0, cfg_scale=0, top_k=0, top_p=1).top_p == 1  # the bounds are in range


def test_bf16_weight_decoding_stays_close_to_fp32():
    lm = tiny_lm("simba")
    text = torch.randn(1, L, TEXT_DIM)
    bf16 = Generator(lm, weight_dtype=torch.bfloat16).lm
    assert bf16.heads[0].weight.dtype == torch.bfloat16 and lm.heads[0].weight.dtype == torch.float32
    with torch.no_grad():
        a, sa = lm.prefill(Conditioning(text))
        b, sb = bf16.prefill(Conditioning(text))
        tokens = torch.randint(0, 11, (1, 3))
        a2, _ = lm.step(tokens, sa)
        b2, _ = bf16.step(tokens, sb)
    assert (a - b).abs().max() < 0.1 and (a2 - b2).abs().max() < 0.1
    assert not torch.equal(a2, b2)


def _mixer_states(state):
    return [layer.mixer for layer in state.backbone.layers]


def _rest_of_state(mixer_state) -> list[torch.Tensor]:
    """The tensors of a mixer's state besides its SSM state: convolution windows, Mamba-3's phase, k, v."""
    fields = dataclasses.fields(mixer_state)
    return [getattr(mixer_state, f.name) for f in fields if f.name != "ssm"]


@pytest.mark.parametrize("kind", ["simba", "mamba2", "mamba", "simba3", "mamba3"])
def test_a_bf16_recurrent_state_stays_bf16_and_decodes_close_to_fp32(kind):
    """Only the SSM state is stored in bf16 (the convolution windows, Mamba-3's phase and its
    previous k and v stay fp32); each step rounds it once, so 40 steps stay close to the fp32
    decode but not equal to it."""
    lm = tiny_lm(kind)
    text = torch.randn(2, L, TEXT_DIM)
    seq = torch.randint(0, 11, (2, 3, 40))
    with torch.no_grad():
        _, wide = lm.prefill(Conditioning(text))
        narrow = wide.clone().with_recurrent_dtype(torch.bfloat16)  # the conv windows would be shared
        assert all(
            m.ssm.dtype == torch.bfloat16 and all(t.dtype == torch.float32 for t in _rest_of_state(m))
            for m in _mixer_states(narrow)
        )
        assert all(m.ssm.dtype == torch.float32 for m in _mixer_states(wide))  # the original is untouched
        worst = 0.0
        for s in range(seq.shape[-1]):
            a, wide = lm.step(seq[..., s], wide)
            b, narrow = lm.step(seq[..., s], narrow)
            worst = max(worst, (a - b).abs().max().item())
    assert all(m.ssm.dtype == torch.bfloat16 for m in _mixer_states(narrow))
    assert 0 < worst < 0.05


def test_the_generator_stores_the_state_in_the_dtype_it_is_given(monkeypatch):
    lm = tiny_lm("simba")
    text = torch.randn(1, L, TEXT_DIM)
    seen = []
    step = lm.step

    def spy(tokens, state):
        seen.extend(m.ssm.dtype for m in _mixer_states(state))
        return step(tokens, state)

    monkeypatch.setattr(lm, "step", spy)
    codes = Generator(lm, state_dtype=torch.bfloat16).generate(Conditioning(text), 6, seed=0)
    assert codes.shape == (1, 3, 6) and seen and set(seen) == {torch.bfloat16}
    seen.clear()
    Generator(lm, state_dtype=torch.float32).generate(Conditioning(text), 6, seed=0)
    assert seen and set(seen) == {torch.float32}
    with pytest.raises(ValueError, match="KV cache"):
        Generator(tiny_lm("transformer"), state_dtype=torch.bfloat16)
    for unsupported in (torch.float16, torch.int8):
        with pytest.raises(ValueError, match="must be torch"):
            Generator(lm, state_dtype=unsupported)


def test_cpu_kernels_decode_like_the_pytorch_reference(monkeypatch):
    lm = tiny_lm("simba")
    text = torch.randn(2, L, TEXT_DIM)
    sampling = SamplingConfig(temperature=0, cfg_scale=3.0)
    assert cpu_kernels.available()
    with_kernels = Generator(lm).generate(Conditioning(text), 12, sampling=sampling)
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    reference = Generator(lm).generate(Conditioning(text), 12, sampling=sampling)
    assert torch.equal(with_kernels, reference)


@pytest.mark.parametrize("kind", ["simba3", "mamba3"])
def test_mamba3_blocks_decode_on_their_block_kernel_where_the_kernels_build(kind, monkeypatch):
    """Mamba-3 blocks get their own fused step (Mamba3BlockKernel; not Mamba-2's) and decode through
    it, with fp32 or bf16 weights and state; in fp32 to the same tokens as without the kernels."""
    lm = tiny_lm(kind, "cross")
    assert cpu_kernels.available()
    for block in lm.backbone.layers:
        assert isinstance(block._fused_step, Mamba3BlockKernel) and Mamba2BlockKernel.for_block(block) is None
    calls = []
    step = Mamba3BlockKernel.step
    monkeypatch.setattr(Mamba3BlockKernel, "step", lambda self, x, state: calls.append(x.shape) or step(self, x, state))
    text = torch.randn(2, L, TEXT_DIM)
    sampling = SamplingConfig(temperature=0, cfg_scale=3.0)
    with_kernels = Generator(lm).generate(Conditioning(text), 8, sampling=sampling)
    assert calls and set(calls) == {(4, lm.cfg.backbone.d_model)}  # both CFG branches, one batch of rows
    narrow = Generator(lm, weight_dtype=torch.bfloat16, state_dtype=torch.bfloat16)
    narrow_codes = narrow.generate(Conditioning(text), 8, sampling=sampling)
    assert narrow_codes.shape == (2, 3, 8) and int(narrow_codes.max()) < lm.cfg.cardinality
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    assert torch.equal(Generator(lm).generate(Conditioning(text), 8, sampling=sampling), with_kernels)


def test_a_state_whose_position_and_clock_column_are_tensors_steps_like_one_with_ints():
    """A CUDA graph (generation/cuda_graph.py) replays steps whose position and clock column are
    0-d tensors that it advances itself: the step must read them exactly as it reads ints."""
    lm = tiny_lm("simba", "cross", positions="sinusoidal", beat_clock=True)
    with torch.no_grad():
        lm.clock.weight.normal_(0.0, 1.0)
    text = torch.randn(2, L, TEXT_DIM)
    clock = torch.tensor([[0.1, 0.3], [float("nan"), float("nan")]], dtype=torch.float64)
    seq = torch.randint(0, 11, (2, 3, 8))
    with torch.no_grad():
        _, ints = lm.prefill(Conditioning(text, None, clock), seq[..., :3])
        tensors = dataclasses.replace(
            ints.clone(), position=torch.tensor(ints.position), column=torch.tensor(ints.column)
        )
        for s in range(3, 8):
            a, ints = lm.step(seq[..., s], ints)
            b, tensors = lm.step(seq[..., s], tensors)
            assert torch.equal(a, b)
        shifted = dataclasses.replace(tensors, position=tensors.position + 1)  # the position is read
        assert not torch.equal(lm.step(seq[..., 0], shifted.clone())[0], lm.step(seq[..., 0], tensors.clone())[0])
    assert int(tensors.position) == ints.position and int(tensors.column) == ints.column


def test_cuda_graphs_are_refused_where_they_cannot_apply():
    lm = tiny_lm("simba")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        Generator(lm, cuda_graph=True).generate(Conditioning(torch.randn(1, L, TEXT_DIM)), 6)
    with pytest.raises(ValueError, match="cannot decode from a CUDA graph"):
        GraphedStep(lm, lm.prefill(Conditioning(torch.randn(1, L, TEXT_DIM)))[1], torch.zeros(1, 3, dtype=torch.long))
    default = Generator(lm).generate(Conditioning(torch.randn(1, L, TEXT_DIM)), 6, seed=0)  # None: eager on the CPU
    assert default.shape == (1, 3, 6)

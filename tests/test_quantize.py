"""int8 and int4 weights (ops/quantize.py): the packed layouts, the C++ kernel against its twin, and
quantized models decoding as their own forward does."""

import pytest
import test_fused
import torch
from conftest import KINDS, tiny_lm
from test_lm import inputs, left_padded_mask, teacher_forced

from ssmttm.conditioning import Conditioning
from ssmttm.ops import cpu_kernels
from ssmttm.ops import quantize as Q
from ssmttm.ops.linear import linear

kernels = test_fused.kernels  # this CPU's build, and an x86-64-v3 one (slow): no VNNI, the plain loops
_kernels_build = test_fused._kernels_build

FORMATS = [("int8", 64), ("int4", 32), ("int4", 64), ("int4", 128)]
EPS = 2.0**-24  # fp32's unit roundoff


@pytest.mark.parametrize(("fmt", "group"), FORMATS)
@pytest.mark.parametrize("width", [77, 130, 256])
def test_packing_rounds_each_weight_to_its_nearest_level(fmt, group, width):
    """unpack(pack(w)) is w rounded to the nearest of its row's (int8) or group's (int4) levels:
    off by at most half a step, the step being the scale. int4's levels run from -8 to +7 steps, the
    scale putting the group's largest-magnitude weight on -8: a weight of the other sign beyond
    +7 steps is clamped there, at most one step off."""
    w = torch.randn(43, width) * torch.logspace(-3, 1, 43)[:, None]  # rows of very different sizes
    w[5] = 0  # an all-zero row stays zero
    packed = Q.pack(w, fmt, group)
    back = Q.unpack(packed, width)
    assert back.shape == w.shape and back[5].eq(0).all()
    if fmt == "int8":
        assert packed.dtype == torch.int8 and packed.shape == (43, width + 4)
        step = w.abs().amax(dim=1, keepdim=True) / 127
        assert ((back - w).abs() <= step / 2 * (1 + 1e-5)).all()
        return
    padded = -(-width // max(64, group)) * max(64, group)
    assert packed.dtype == torch.uint8 and packed.shape == (43, padded // group, 2 + group // 2)
    assert Q.int_group(packed) == group
    wg = torch.nn.functional.pad(w, (0, padded - width)).view(43, -1, group)
    step = packed[..., :2].contiguous().view(torch.bfloat16).float().abs()  # (out, G, 1)
    err = (torch.nn.functional.pad(back, (0, padded - width)).view(43, -1, group) - wg).abs()
    inside = (wg / step).abs() <= 7  # no clamp can reach these
    assert (err[inside.expand_as(err)] <= (step / 2 * (1 + 1e-3)).expand_as(err)[inside.expand_as(err)]).all()
    # The peak is 8 steps of the scale rounded to bf16 (8 bits, so up to 2^-8 off): the other sign's
    # clamp at 7 steps misses a weight of the peak's size by up to 8 x 2^-8 of a step more than one.
    assert (err <= step * (1 + 8 * 2**-8)).all()


def test_activations_round_half_to_even_as_the_kernel_does(kernels):
    """quantize_rows divides 127 by the row's peak (torch's `127 / t` is 127 * (1 / t), at times an ulp
    away, which moved a product sitting on a tie to the other integer)."""
    x = torch.tensor([[-1.4288, 3.456335, 0.0]])
    q, scale = Q.quantize_rows(x)
    assert q.tolist() == [[-52.0, 127.0, 0.0]]  # -1.4288 * (127 / 3.456335) is -52.5 exactly, in fp32
    assert scale.item() == pytest.approx(3.456335 / 127)
    q, scale = Q.quantize_rows(torch.zeros(2, 5))
    assert q.eq(0).all() and scale.eq(0).all()
    identity = Q.pack(torch.eye(3), "int8")  # each row 127 at a scale of 1/127: the kernel returns q * scale
    y = kernels.linear_rows(x, identity, None)
    assert torch.round(y / (3.456335 / 127)).tolist() == [[-52.0, 127.0, 0.0]]


@pytest.mark.parametrize(("fmt", "group"), FORMATS)
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 9, 16, 17])
@pytest.mark.parametrize("width", [77, 130, 1024])
def test_kernel_equals_its_twin_in_exact_arithmetic(kernels, fmt, group, rows, width):
    """The kernel against the exact product of the int8 activations and the dequantized weights (in
    float64). Its integer sums are exact, so the only error is fp32's in what follows them: int8
    scales one exact sum twice (3 roundings of the result); int4 adds up one scaled sum per 64
    inputs, each rounding at most EPS of the sum so far, so at most (units + 2) EPS of the sum of
    the terms' magnitudes. Widths 77 and 130 end inside a 64-wide unit; 43 outputs take the
    single-row tail; 9 and 17 rows go through the 8-row blocks twice and three times."""
    torch.manual_seed(0)
    w, bias, x = torch.randn(43, width), torch.randn(43), torch.randn(rows, width) * 3
    packed = Q.pack(w, fmt, group)
    y = kernels.linear_rows(x, packed, bias)
    q, scale = Q.quantize_rows(x)
    terms = q.double()[:, None, :] * Q.unpack(packed, width).double()[None] * scale.double()[:, :, None]
    exact = terms.sum(-1) + bias.double()
    units = -(-width // 64)
    bound = (3 if fmt == "int8" else units + 2) * EPS * terms.abs().sum(-1) + 2 * EPS * exact.abs()
    assert y.shape == (rows, 43) and y.dtype == torch.float32
    assert ((y.double() - exact).abs() <= bound).all()
    twin = Q.quantized_linear(x, packed, bias, width)
    assert ((twin.double() - exact).abs() <= (width + 2) * EPS * terms.abs().sum(-1) + 2 * EPS * exact.abs()).all()


@pytest.mark.parametrize(("fmt", "group"), FORMATS)
def test_a_quantized_linear_is_close_to_the_float_one(fmt, group):
    """What the formats cost on one layer, relative to the output's size: int8 (weights and
    activations each within half a step of 1/127 of their peak) about 1%, int4 about 10%."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(512, 256)
    x = torch.randn(16, 512)
    with torch.no_grad():
        expected = layer(x)
        Q.quantize_linear_weights(layer, fmt, group)
        got = linear(x, layer)
    error = ((got - expected).norm() / expected.norm()).item()
    assert error < (0.02 if fmt == "int8" else 0.15)
    assert error > 1e-4  # it did quantize


def test_linear_sends_packed_weights_to_the_kernel_and_elsewhere_to_the_twin(monkeypatch):
    layer = torch.nn.Linear(100, 30)
    Q.quantize_linear_weights(layer, "int4")
    assert layer.weight.dtype == torch.uint8 and not layer.weight.requires_grad
    x = torch.randn(20, 100)  # more rows than the float kernel takes: packed weights take any number
    calls = []
    original = cpu_kernels.extension().linear_rows
    monkeypatch.setattr(
        cpu_kernels,
        "extension",
        lambda: type("E", (), {"linear_rows": staticmethod(lambda *a: calls.append(a) or original(*a))}),
    )
    with torch.no_grad():
        fused = linear(x, layer)
        prefill = linear(x[None], layer)  # (B, T, D): the twin
    assert len(calls) == 1
    torch.testing.assert_close(fused, prefill[0], atol=1e-5, rtol=1e-5)
    with torch.enable_grad():
        linear(x, layer)  # autograd wanted: the twin, whose rounding passes no gradient to x
    assert len(calls) == 1


def test_the_kernel_refuses_a_packed_weight_of_the_wrong_width(kernels):
    packed = Q.pack(torch.randn(8, 100), "int8")
    expected = r"weight must be a contiguous CPU int8 weight of shape \(\*, 103\) for 99 inputs, not \(8, 104\)"
    with pytest.raises(RuntimeError, match=expected):
        kernels.linear_rows(torch.randn(2, 99), packed, None)
    packed = Q.pack(torch.randn(8, 100), "int4", 64)
    with pytest.raises(RuntimeError, match="int4"):
        kernels.linear_rows(torch.randn(2, 200), packed, None)
    with pytest.raises(RuntimeError, match="int4"):
        kernels.linear_rows(torch.randn(2, 100), packed[:, :1].contiguous(), None)


# Every backbone, the Transformer and Mamba-1 included: the Linears are the same wherever they sit.
@pytest.mark.parametrize(("fmt", "group"), [("int8", 64), ("int4", 64)])
@pytest.mark.parametrize(("kind", "cond"), [(kind, cond) for kind in KINDS for cond in ("prefix", "cross")])
def test_a_quantized_model_steps_as_its_own_forward_does(fmt, group, kind, cond):
    """Teacher-forced: prefill then step by step (the kernels, where they apply) equals the parallel
    forward (the twin) of the same quantized model. Both quantize each position's activations the
    same way, so they differ by fp32 sums in another order, far below what quantizing moved the
    logits by, which the last check shows."""
    lm = tiny_lm(kind, cond)
    seq, text = inputs(lm)
    mask = left_padded_mask([5, 2])
    with torch.no_grad():
        float_logits = lm(seq, Conditioning(text, mask))
        Q.quantize_linear_weights(lm, fmt, group)
        full = lm(seq, Conditioning(text, mask))
    stepped, _ = teacher_forced(lm, seq, text, mask, 3)
    torch.testing.assert_close(stepped, full[:, :, 3:], atol=1e-4, rtol=0)
    assert (full - float_logits).abs().max() > 1e-3

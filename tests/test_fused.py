"""The C++ decoding kernels against their PyTorch reference twins, and against wrong arguments."""

import json
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple
from unittest import mock

import pytest
import torch

from ssmttm.backbones.attention import CrossState
from ssmttm.backbones.blocks import BlockState
from ssmttm.backbones.mamba2 import Mamba2BlockKernel
from ssmttm.conditioning import Conditioning
from ssmttm.generation import Generator
from ssmttm.lm import MusicLM
from ssmttm.ops import cpu_kernels
from ssmttm.ops.linear import _kernel_applies, linear
from ssmttm.ops.mamba2_step import mamba2_step_fused, mamba2_step_ref
from ssmttm.ops.selective_scan import selective_scan_step
from ssmttm.ops.ssd import ssd_step
from ssmttm.presets import load_preset

# x86-64-v3's instructions (AVX2 and FMA among them): a CPU with these runs that build.
X86_64_V3 = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}


def _cpu_flags() -> set[str]:
    return set(cpu_kernels._cpu_flags().split())


def _runs_x86_64_v3() -> bool:
    return platform.machine() == "x86_64" and _cpu_flags() >= X86_64_V3


@pytest.fixture(autouse=True)
def _kernels_build():
    assert cpu_kernels.available(), "the kernels should build wherever the test suite runs"


@pytest.fixture(params=["native", pytest.param("x86-64-v3", marks=pytest.mark.slow)])
def kernels(request, monkeypatch):
    """The decoding paths on this CPU's build of the kernels, and on an x86-64-v3 build (AVX2, no
    AVX-512), so that the loops for CPUs without AVX-512 are tested on this one too. The second build
    takes about 40 s once, so it is marked slow; it is cached beside the first."""
    if request.param != "native" and not _runs_x86_64_v3():
        pytest.skip("an x86-64-v3 build needs an x86-64-v3 CPU")
    extension = cpu_kernels.extension(request.param)
    monkeypatch.setattr(cpu_kernels, "extension", lambda: extension)
    monkeypatch.setattr(cpu_kernels, "linear_max_rows", lambda: int(extension.linear_max_rows()))
    return extension


def test_the_kernels_take_8_rows_with_avx512_and_4_without():
    """The native build on this CPU takes the AVX-512 branch where it has AVX-512 (8 rows a call); the
    x86-64-v3 build never does (4 rows, the next test), whatever the CPU: the `kernels` fixture tests
    both branches."""
    avx512 = _cpu_flags() >= {"avx512f", "avx512bw", "avx512vl"}
    assert cpu_kernels.extension().linear_max_rows() == (8 if avx512 else 4)


@pytest.mark.slow  # the x86-64-v3 build, about 40 s once
def test_the_x86_64_v3_build_takes_4_rows_whatever_the_cpu():
    if not _runs_x86_64_v3():
        pytest.skip("an x86-64-v3 build needs an x86-64-v3 CPU")
    assert cpu_kernels.extension("x86-64-v3").linear_max_rows() == 4


@pytest.mark.parametrize(("batch", "ngroups", "d_state"), [(1, 1, 16), (3, 2, 16), (2, 1, 37)])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_fused_step_equals_reference(kernels, batch, ngroups, d_state, state_dtype):
    # d_state 37: rows that end in a partial vector (the bf16 kernel's masked tail)
    heads, headdim, width = 4, 8, 4
    d_inner = heads * headdim
    conv_dim = d_inner + 2 * ngroups * d_state
    params = dict(
        conv_weight=torch.randn(conv_dim, 1, width),
        conv_bias=torch.randn(conv_dim),
        dt_bias=torch.randn(heads),
        A_log=torch.randn(heads),
        D=torch.randn(heads),
        norm_weight=torch.randn(d_inner),
    )
    conv, ssm = torch.randn(batch, conv_dim, width), torch.randn(batch, heads, headdim, d_state).to(state_dtype)
    states = {"ref": (conv.clone(), ssm.clone()), "fused": (conv.clone(), ssm.clone())}
    for _ in range(3):  # several steps: the window shift and the state carry over
        zxbcdt = torch.randn(batch, d_inner + conv_dim + heads)
        y_ref = mamba2_step_ref(
            zxbcdt, states["ref"][0], ssm_state=states["ref"][1], ngroups=ngroups, eps=1e-5, **params
        )
        y = mamba2_step_fused(
            zxbcdt, states["fused"][0], ssm_state=states["fused"][1], ngroups=ngroups, eps=1e-5, **params
        )
        torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(states["fused"][0], states["ref"][0])
    assert states["fused"][1].dtype == state_dtype
    # bf16: both round the same fp32 values to nearest even, so at most an ulp apart where the
    # fp32 sums differ in their last bit, and rarely (a truncating store would differ on about half)
    tolerance = 1e-5 if state_dtype == torch.float32 else 8e-3
    torch.testing.assert_close(states["fused"][1], states["ref"][1], atol=tolerance, rtol=tolerance)
    if state_dtype == torch.bfloat16:
        assert (states["fused"][1] != states["ref"][1]).float().mean() < 0.01


def test_a_bf16_state_step_is_the_fp32_step_rounded_once():
    """The reference rounds the updated state once, and reads out the unrounded fp32 values."""
    heads, headdim, d_state = 3, 4, 8
    state = torch.randn(2, heads, headdim, d_state).bfloat16()
    wide = state.float()
    args = (torch.randn(2, heads, headdim), torch.rand(2, heads), -torch.rand(heads), torch.randn(2, 1, d_state))
    C = torch.randn(2, 1, d_state)
    y_wide = ssd_step(wide, *args, C)
    y = ssd_step(state, *args, C)
    assert state.dtype == torch.bfloat16 and torch.equal(state, wide.bfloat16())
    torch.testing.assert_close(y, y_wide)
    scan_state = torch.randn(2, 5, d_state).bfloat16()
    scan_wide = scan_state.float()
    scan_args = (torch.randn(2, 5), torch.rand(2, 5), -torch.rand(5, d_state), torch.randn(2, d_state), C[:, 0])
    torch.testing.assert_close(selective_scan_step(scan_state, *scan_args), selective_scan_step(scan_wide, *scan_args))
    assert torch.equal(scan_state, scan_wide.bfloat16())


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width", [100, 120])
def test_linear_kernel_equals_fp64_matmul_on_the_same_weights(kernels, rows, with_bias, dtype, width):
    if rows > cpu_kernels.linear_max_rows():
        pytest.skip("this build of the kernels takes at most 4 rows (no AVX-512)")
    # Widths with a remainder after 16-wide vectors and after the bf16 loop's 32-wide chunks (4, and
    # 24: one whole and one masked 16-wide vector); 43 outputs: a multiple of none of 8, 4 and 2, the
    # weight rows the loops take at a time, so the single-row tail runs too.
    layer = torch.nn.Linear(width, 43, bias=with_bias).to(dtype)
    x = torch.randn(rows, width)
    with torch.no_grad():
        assert _kernel_applies(x, layer.weight)
        y = linear(x, layer)
        expected = x.double() @ layer.weight.double().T
        if with_bias:
            expected = expected + layer.bias.double()
    assert y.dtype == torch.float32 and y.shape == (rows, 43)
    torch.testing.assert_close(y.double(), expected, atol=1e-4, rtol=1e-5)  # exact weights, fp32 sums


@pytest.mark.parametrize("name", ["silu", "gelu"])
def test_kernel_activations_are_as_exact_as_torchs(kernels, name):
    # block_step's silu and gelu (vectorised exp and erf with AVX-512) against the float64 function,
    # from far in the saturated tails through zero, 30003 values (a masked 3-wide tail). They may
    # be off by a few fp32 roundings, as torch's own are, and no more: a polynomial coefficient off
    # by 1e-4 fails here long before it moves a decoded logit.
    ref = {"silu": torch.nn.functional.silu, "gelu": torch.nn.functional.gelu}[name]
    g = torch.Generator().manual_seed(0)
    tails = torch.linspace(-120, 120, 20001)
    x = torch.cat([tails, torch.randn(9999, generator=g) * 3, torch.tensor([0.0, 1e-30, -1e-40])])
    y = kernels.activation(x, name)
    exact = ref(x.double())
    assert y.shape == x.shape and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), exact, atol=1.5e-6, rtol=5e-7)
    torch.testing.assert_close(ref(x).double(), exact, atol=1.5e-6, rtol=5e-7)  # torch's meets the same bound


def test_more_rows_than_the_kernel_takes_go_to_the_matmul(kernels):
    layer = torch.nn.Linear(64, 32)
    x = torch.randn(cpu_kernels.linear_max_rows() + 1, 64)
    with torch.no_grad():
        assert not _kernel_applies(x, layer.weight)
        torch.testing.assert_close(linear(x, layer), layer(x))


# d_model 40 and mlp_hidden 72: widths with a remainder after 16-wide vectors; two groups; d_state 37
SMALL_MAMBA2 = [
    "backbone.n_layers=2",
    "backbone.d_model=40",
    "backbone.mamba2.headdim=8",
    "backbone.mamba2.ngroups=2",
    "backbone.mamba2.d_state=37",
    "backbone.norm_eps=1e-4",
]
SMALL_SIMBA = [*SMALL_MAMBA2, "backbone.mlp_hidden=72"]


@pytest.mark.parametrize("rows", [1, 2, 5])
# Packed weights ("int8", "int4") with an fp32 state: their activations are rounded to int8, so an
# fp32 difference between the paths that lands on a rounding boundary moves a logit by 1e-2; a bf16
# state's ulp-sized differences (8e-3) would land there often.
@pytest.mark.parametrize(
    ("weight_dtype", "state_dtype"),
    [(None, None), (torch.bfloat16, torch.bfloat16), ("int8", None), ("int4", None)],
)
@pytest.mark.parametrize(
    ("preset", "overrides"),
    [
        ("tiny-simba", SMALL_SIMBA),
        ("tiny-mamba2", SMALL_MAMBA2),
        ("tiny-simba", [*SMALL_SIMBA, "conditioning=cross", "backbone.num_heads=5"]),  # the demo's layout
    ],
)
def test_block_step_kernel_decodes_like_the_modules(
    kernels, monkeypatch, rows, weight_dtype, state_dtype, preset, overrides
):
    """A whole SiMBA or Mamba-2 block in one C++ call against the same block run module by module
    (each of whose kernels has its own test above): logits and every state tensor, over several steps."""
    if rows > cpu_kernels.linear_max_rows():
        pytest.skip("this build of the kernels takes at most 4 rows (no AVX-512)")
    torch.manual_seed(0)
    lm = _decoding_lm(MusicLM(load_preset(preset, overrides)), weight_dtype)
    with torch.no_grad():
        _, state = lm.prefill(Conditioning(torch.randn(rows, 5, lm.cfg.text_dim)))
        if state_dtype is not None:
            state = state.with_recurrent_dtype(state_dtype)
        states = {"fused": state.clone(), "modules": state.clone()}
        fused_calls = 0
        original = Mamba2BlockKernel.step

        def counted(self, x, mixer_state):
            nonlocal fused_calls
            fused_calls += 1
            return original(self, x, mixer_state)

        monkeypatch.setattr(Mamba2BlockKernel, "step", counted)
        for _ in range(3):
            tokens = torch.randint(0, lm.cfg.cardinality, (rows, lm.cfg.num_codebooks))
            logits, states["fused"] = lm.step(tokens, states["fused"])
            with monkeypatch.context() as patch:
                patch.setattr(Mamba2BlockKernel, "applies", lambda *_: False)
                expected, states["modules"] = lm.step(tokens, states["modules"])
            torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    assert fused_calls == 3 * len(lm.backbone.layers)
    for got, want in zip(states["fused"].tensors(), states["modules"].tensors(), strict=True):
        assert got.dtype == want.dtype
        tolerance = 1e-5 if got.dtype == torch.float32 else 8e-3  # bf16: an ulp where fp32 sums differ
        torch.testing.assert_close(got, want, atol=tolerance, rtol=tolerance)


def _decoding_lm(lm: MusicLM, weights: torch.dtype | str | None) -> MusicLM:
    """The LM a generator decodes with, its Linear weights in a dtype, or packed ("int8", "int4")."""
    if isinstance(weights, str):
        return Generator(lm, quantize=weights).lm
    return Generator(lm, weight_dtype=weights).lm


def test_block_step_kernel_is_not_used_where_it_cannot_apply():
    lm = MusicLM(load_preset("tiny-simba", SMALL_SIMBA)).eval()
    block = lm.backbone.layers[0]
    with torch.no_grad():
        _, state = lm.prefill(Conditioning(torch.randn(2, 5, lm.cfg.text_dim)))
    x, layer_state = torch.randn(2, 40), state.backbone.layers[0]
    with torch.no_grad():
        assert block._fused_step.applies(x, layer_state, False)
        assert not block._fused_step.applies(x.double(), layer_state, False)
        assert not block._fused_step.applies(torch.randn(cpu_kernels.linear_max_rows() + 1, 40), layer_state, False)
        block.mlp.fc1.half()  # a weight dtype the kernel does not read
        assert not block._fused_step.applies(x, layer_state, False)
        block.mlp.fc1.float()
        block.train()  # dropout
        assert not block._fused_step.applies(x, layer_state, block.training)
        block.eval()
    assert not block._fused_step.applies(x, layer_state, False)  # gradients wanted
    transformer = MusicLM(load_preset("tiny-transformer")).eval()
    with torch.no_grad():
        _, state = transformer.prefill(Conditioning(torch.randn(2, 5, transformer.cfg.text_dim)))
        x = torch.randn(2, transformer.cfg.backbone.d_model)
        assert transformer.backbone.layers[0]._fused_step is None


def test_block_step_kernel_attends_like_the_modules_when_text_is_masked(kernels):
    """Cross-attention over a padded caption, and over a row whose every text position is masked
    (scaled_dot_product_attention gives zeros there; so must the kernel)."""
    torch.manual_seed(0)
    lm = MusicLM(load_preset("tiny-simba", [*SMALL_SIMBA, "conditioning=cross", "backbone.num_heads=5"])).eval()
    with torch.no_grad():
        _, state = lm.prefill(Conditioning(torch.randn(3, 6, lm.cfg.text_dim)))
        layer = state.backbone.layers[1]
        mask = torch.ones(3, layer.cross.k.shape[2], dtype=torch.bool)
        mask[1, 2:] = False
        mask[2] = False
        layer = BlockState(layer.mixer, CrossState(layer.cross.k, layer.cross.v, mask))
        block, x = lm.backbone.layers[1], torch.randn(3, 40)
        assert block._fused_step.applies(x, layer, False)
        fused, _ = block.step(x, layer.clone())
        expected, _ = block._step_modules(x, layer.clone())
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)


# -- wrong arguments ------------------------------------------------------------------------------
# Each mismatch must be one clear error on every path: the PyTorch reference, the fused path (whose
# Python wrapper checks the batch first, so that both raise the same ValueError), and the kernel
# called directly (its own checks: a RuntimeError naming the argument). Before those checks some of
# these calls read and wrote out of bounds, and one aborted the interpreter ("double free or
# corruption"), so the fused and kernel paths run in a subprocess: a regression fails these tests
# instead of killing pytest. No refused call may have changed the state.

HEADS, HEADDIM, D_STATE, NGROUPS, WIDTH = 4, 8, 16, 2, 4
D_INNER = HEADS * HEADDIM
CONV_DIM = D_INNER + 2 * NGROUPS * D_STATE  # 96

# block_step's arguments by name, in the order Mamba2BlockKernel.step passes them
BLOCK_STEP_ARGS = (
    *("x", "conv_state", "ssm_state", "keys", "values", "key_mask", "mixer_norm", "mixer_eps", "in_proj"),
    *("in_bias", "conv_weight", "conv_bias", "dt_bias", "A_log", "D", "gate_norm", "ngroups", "gate_eps"),
    *("out_proj", "out_bias", "cross_norm", "cross_eps", "q_proj", "cross_out", "mlp_norm", "mlp_eps", "fc1"),
    *("fc1_bias", "fc2", "fc2_bias"),
)
TEXT_FIELDS = {"keys": "k", "values": "v", "key_mask": "mask"}  # block_step's names for CrossState's

Call = Callable[[], object]


def _step_args(**changes) -> dict:
    """mamba2_step's arguments at batch 2, with `changes`."""
    g = torch.Generator().manual_seed(0)
    args = dict(
        zxbcdt=torch.randn(2, D_INNER + CONV_DIM + HEADS, generator=g),
        conv_state=torch.randn(2, CONV_DIM, WIDTH, generator=g),
        conv_weight=torch.randn(CONV_DIM, 1, WIDTH, generator=g),
        conv_bias=torch.randn(CONV_DIM, generator=g),
        dt_bias=torch.randn(HEADS, generator=g),
        A_log=torch.randn(HEADS, generator=g),
        D=torch.randn(HEADS, generator=g),
        norm_weight=torch.randn(D_INNER, generator=g),
        ssm_state=torch.randn(2, HEADS, HEADDIM, D_STATE, generator=g),
        ngroups=NGROUPS,
        eps=1e-5,
    )
    return {**args, **changes}


def _mamba2_step(path: str, **changes) -> tuple[Call, list[torch.Tensor]]:
    """mamba2_step_ref, mamba2_step_fused or the kernel's mamba2_step on `changes`; and the state."""
    args = _step_args(**changes)
    step = {"reference": mamba2_step_ref, "fused": mamba2_step_fused}.get(path) or cpu_kernels.extension().mamba2_step
    return (lambda: step(**args)), [args["conv_state"], args["ssm_state"]]


def _cross_lm() -> MusicLM:
    """A SiMBA LM whose blocks attend to the text and have an MLP (the demo's layout, d_model 40)."""
    torch.manual_seed(0)
    return MusicLM(load_preset("tiny-simba", [*SMALL_SIMBA, "conditioning=cross", "backbone.num_heads=5"])).eval()


def _block_step(path: str, rows: int = 2, in_proj_width: int | None = None, **changes) -> tuple[Call, list]:
    """A block's step on x of `rows` rows against a state of 2 (6 text keys, the last one masked):
    Block._step_modules without the kernels (reference), Mamba2BlockKernel.step (fused), or block_step
    with `changes` by name (kernel; the text's keys, values and key_mask for the other paths too).
    in_proj's weight `in_proj_width` wide if given."""
    lm = _cross_lm()
    block = lm.backbone.layers[0]
    with torch.no_grad():
        _, lm_state = lm.prefill(Conditioning(torch.randn(2, 6, lm.cfg.text_dim)))
    if in_proj_width is not None:
        block.mixer.in_proj.weight.data = torch.randn(block.mixer.in_proj.out_features, in_proj_width)
    state = lm_state.backbone.layers[0]
    mask = torch.ones(2, state.cross.k.shape[2], dtype=torch.bool)
    mask[:, -1] = False
    text = {"k": state.cross.k, "v": state.cross.v, "mask": mask}
    x, watched = torch.randn(rows, 40), [state.mixer.conv, state.mixer.ssm]
    if path == "kernel":
        values = (x, *watched, *text.values(), *block._fused_step.weights)
        args = {**dict(zip(BLOCK_STEP_ARGS, values, strict=True)), **changes}
        return (lambda: cpu_kernels.extension().block_step(**args)), watched
    state = BlockState(state.mixer, CrossState(**{**text, **{TEXT_FIELDS[k]: v for k, v in changes.items()}}))
    if path == "fused":
        return (lambda: block._fused_step.step(x, state)), watched

    def modules():
        with mock.patch.object(cpu_kernels, "available", lambda: False):
            return block._step_modules(x, state)

    return modules, watched


def _lm_step(path: str) -> tuple[Call, list[torch.Tensor]]:
    """MusicLM.step with one row of tokens on a state of two, fused or without the kernels."""
    lm = _cross_lm()
    with torch.no_grad():
        _, state = lm.prefill(Conditioning(torch.randn(2, 6, lm.cfg.text_dim)))
    tokens = torch.zeros(1, lm.cfg.num_codebooks, dtype=torch.long)

    def step():
        with mock.patch.object(cpu_kernels, "available", lambda: path == "fused"):
            return lm.step(tokens, state)

    return step, state.tensors()


class Mismatch(NamedTuple):
    build: Callable[[str], tuple[Call, list[torch.Tensor]]]  # path -> (the call, the state it may not change)
    errors: dict[str, tuple[type[Exception], str]]  # path -> the error, and a pattern its message matches


def _everywhere(build, value_error: str, kernel_error: str) -> Mismatch:
    """The same ValueError from the reference and the fused path; the kernel's own RuntimeError."""
    errors = {"reference": (ValueError, value_error), "fused": (ValueError, value_error)}
    return Mismatch(build, {**errors, "kernel": (RuntimeError, kernel_error)})


def _kernel_only(build, kernel_error: str) -> Mismatch:
    return Mismatch(lambda path: build(), {"kernel": (RuntimeError, kernel_error)})


_STATE_ROWS = r"decoding step: {} input rows on a state of {} \(conv_state\) and 2 \(ssm_state\)"
_IN_PROJ = (
    r"block_step: in_proj must be a contiguous fp32 or bf16 CPU tensor of shape \(\*, 40\), not Float \(318, 41\)"
)
MISMATCHES = {
    "conv batch vs ssm batch": _everywhere(
        lambda path: _mamba2_step(path, conv_state=torch.randn(1, CONV_DIM, WIDTH)),
        _STATE_ROWS.format(2, 1),
        r"mamba2_step: zxbcdt has 2 rows, conv_state \(batch, channels, width\) is \(1, 96, 4\) and ssm_state "
        r"\(batch, heads, head_dim, d_state\) \(2, 4, 8, 16\): the state needs one input row per batch row",
    ),
    "conv_weight width": _everywhere(
        lambda path: _mamba2_step(path, conv_weight=torch.randn(CONV_DIM, 1, WIDTH - 1)),
        r"decoding step: conv_state \(2, 96, 4\) does not fit conv_weight \(96, 1, 3\)",
        r"mamba2_step: conv_weight .* of shape \(96, 1, 4\), not Float \(96, 1, 3\)",
    ),
    "block_step: x rows vs state rows": _everywhere(
        lambda path: _block_step(path, rows=1),
        _STATE_ROWS.format(1, 2),
        r"block_step: x has 1 rows, conv_state .* \(2, 228, 4\) and ssm_state .* \(2, 10, 8, 37\)",
    ),
    "lm.step: token rows vs state rows": Mismatch(
        _lm_step, {"reference": (ValueError, _STATE_ROWS.format(1, 2)), "fused": (ValueError, _STATE_ROWS.format(1, 2))}
    ),
    "text keys rows": _everywhere(
        lambda path: _block_step(path, keys=torch.randn(1, 5, 6, 8), values=torch.randn(1, 5, 6, 8)),
        r"decoding step: 2 input rows against text keys of 1 rows and values of 1",
        r"block_step: keys must be an fp32 CPU tensor of shape \(2, \*, \*, \*\), not Float \(1, 5, 6, 8\)",
    ),
    "text mask shape": _everywhere(
        lambda path: _block_step(path, key_mask=torch.ones(2, 7, dtype=torch.bool)),
        r"decoding step: a text mask \(2, 7\) for 2 rows of 6 text keys",
        r"block_step: key_mask must be a bool CPU tensor of shape \(2, 6\), not Bool \(2, 7\)",
    ),
    "in_proj width": Mismatch(  # the modules' own error: weights are the model's, not the caller's
        lambda path: _block_step(path, in_proj_width=41),
        {
            "reference": (RuntimeError, r"mat1 and mat2 shapes cannot be multiplied"),
            "fused": (RuntimeError, _IN_PROJ),
            "kernel": (RuntimeError, _IN_PROJ),
        },
    ),
    # every other size the kernels index with, checked by them alone
    **{
        f"mamba2_step {name}": _kernel_only(lambda change=change: _mamba2_step("kernel", **change), pattern)
        for name, change, pattern in [
            ("zxbcdt rows", dict(zxbcdt=torch.randn(1, 132)), r"zxbcdt has 1 rows"),
            (
                "zxbcdt width",
                dict(zxbcdt=torch.randn(2, 133)),
                r"zxbcdt's width \(133\) must be z 32 \+ xBC 96 \+ dt 4",
            ),
            ("zxbcdt strided", dict(zxbcdt=torch.randn(132, 2).T), r"zxbcdt must be a contiguous .* strided"),
            ("conv_state channels", dict(conv_state=torch.randn(2, 95, WIDTH)), r"conv_state .*\(2, 96, \*\)"),
            ("conv_state strided", dict(conv_state=torch.randn(2, WIDTH, CONV_DIM).transpose(1, 2)), r"conv_state"),
            ("conv_weight channels", dict(conv_weight=torch.randn(95, WIDTH)), r"conv_weight .*\(96, 4\)"),
            ("conv_weight dtype", dict(conv_weight=torch.randn(CONV_DIM, 1, WIDTH).double()), r"conv_weight .*Double"),
            ("conv_bias", dict(conv_bias=torch.randn(95)), r"conv_bias .*\(96,\)"),
            ("dt_bias", dict(dt_bias=torch.randn(5)), r"dt_bias .*\(4,\)"),
            ("A_log", dict(A_log=torch.randn(3)), r"A_log .*\(4,\)"),
            ("D", dict(D=torch.randn(HEADS, 1)), r"D .*\(4,\)"),
            ("norm_weight", dict(norm_weight=torch.randn(31)), r"norm_weight .*\(32,\)"),
            ("ngroups", dict(ngroups=3), r"ngroups \(3\) must divide the 4 heads"),
            ("ssm_state dtype", dict(ssm_state=torch.randn(2, HEADS, HEADDIM, D_STATE).half()), r"ssm_state .*Half"),
        ]
    },
    **{
        f"block_step {name}": _kernel_only(lambda change=change: _block_step("kernel", **change), pattern)
        for name, change, pattern in [
            ("x width", dict(x=torch.randn(2, 41)), r"x .*\(\*, 40\), not Float \(2, 41\)"),
            ("x rows", dict(x=torch.randn(9, 40)), r"x must have 1 to \d rows, not 9"),
            ("mixer_norm", dict(mixer_norm=torch.ones(39)), r"x .*\(\*, 39\)"),
            ("in_bias", dict(in_bias=torch.zeros(3)), r"in_bias .*\(\d+,\)"),
            ("gate_norm", dict(gate_norm=torch.ones(3)), r"gate_norm .*\(80,\)"),
            ("out_proj", dict(out_proj=torch.randn(40, 79)), r"out_proj .*\(40, 80\)"),
            ("out_bias", dict(out_bias=torch.zeros(41)), r"out_bias .*\(40,\)"),
            ("cross_norm", dict(cross_norm=torch.ones(41)), r"cross_norm .*\(40,\)"),
            ("q_proj", dict(q_proj=torch.randn(40, 39)), r"q_proj .*\(40, 40\)"),
            ("cross_out", dict(cross_out=torch.randn(39, 40)), r"cross_out .*\(40, 40\)"),
            (
                "keys heads",
                dict(keys=torch.randn(2, 4, 6, 8), values=torch.randn(2, 4, 6, 8)),
                r"heads x head_dim = 40",
            ),
            ("values", dict(values=torch.randn(2, 5, 5, 8)), r"values .*\(2, 5, 6, 8\)"),
            ("key_mask dtype", dict(key_mask=torch.ones(2, 6)), r"key_mask must be a bool"),
            (
                "key_mask without text",
                dict(keys=None, values=None, q_proj=None, cross_norm=None, cross_out=None),
                r"key_mask only",
            ),
            ("mlp_norm", dict(mlp_norm=torch.ones(39)), r"mlp_norm .*\(40,\)"),
            ("fc1", dict(fc1=torch.randn(72, 41)), r"fc1 .*\(\*, 40\)"),
            ("fc1_bias", dict(fc1_bias=torch.zeros(71)), r"fc1_bias .*\(72,\)"),
            ("fc2", dict(fc2=torch.randn(40, 71)), r"fc2 .*\(40, 72\)"),
            ("fc2_bias", dict(fc2_bias=torch.zeros(39)), r"fc2_bias .*\(40,\)"),
            ("an MLP without fc2", dict(fc2=None), r"an MLP needs its mlp_norm, fc1 and fc2"),
        ]
    },
}


def _outcome(case: str, path: str) -> dict:
    """What the call of `case` on `path` raised, and whether it changed the state."""
    call, state = MISMATCHES[case].build(path)
    before = [t.clone() for t in state]
    error = message = None
    try:
        with torch.no_grad():
            call()
    except Exception as err:
        error, message = type(err).__name__, str(err)
    changed = any(not torch.equal(a, b) for a, b in zip(before, state, strict=True))
    return {"case": case, "path": path, "error": error, "message": message, "state_changed": changed}


# Run in a subprocess: the crash-prone paths, one JSON line per call as each completes.
_ISOLATED = """
import json, sys
sys.path.insert(0, sys.argv[1])
import test_fused
for case, mismatch in test_fused.MISMATCHES.items():
    for path in ("fused", "kernel"):
        if path in mismatch.errors:
            print("calling:", case, path, file=sys.stderr, flush=True)  # the last line if it crashes
            print(json.dumps(test_fused._outcome(case, path)), flush=True)
"""


@pytest.fixture(scope="module")
def isolated_outcomes() -> tuple[dict, subprocess.CompletedProcess]:
    run = subprocess.run(
        [sys.executable, "-c", _ISOLATED, str(Path(__file__).parent)], capture_output=True, text=True, timeout=600
    )
    outcomes = [json.loads(line) for line in run.stdout.splitlines()]
    return {(o["case"], o["path"]): o for o in outcomes}, run


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_a_mismatch_is_one_clear_error_on_every_path(case, isolated_outcomes):
    outcomes, run = isolated_outcomes
    for path, (error, pattern) in MISMATCHES[case].errors.items():
        outcome = _outcome(case, path) if path == "reference" else outcomes.get((case, path))
        assert outcome is not None, f"the subprocess died (exit {run.returncode}): {run.stderr[-2000:]}"
        assert (outcome["error"], outcome["state_changed"]) == (error.__name__, False), (path, outcome)
        assert re.search(pattern, outcome["message"]), (path, outcome["message"])
    if MISMATCHES[case].errors.get("reference", (None,))[0] is ValueError:  # the very same error
        assert _outcome(case, "reference")["message"] == outcomes[case, "fused"]["message"]


def test_block_step_takes_its_arguments_by_name():
    """The names in BLOCK_STEP_ARGS are the kernel's, in the order Mamba2BlockKernel.step passes them."""
    by_name, _ = _block_step("kernel")
    positional, _ = _block_step("fused")
    with torch.no_grad():
        torch.testing.assert_close(by_name(), positional(), rtol=0, atol=0)

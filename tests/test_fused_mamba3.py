"""The fused CPU decoding of Mamba-3 (cpu_kernels.cpp) against its PyTorch twins and wrong arguments.

The mixer kernel against `mamba3_step_ref`, both paths of `Mamba3.step` against mamba_ssm's goldens,
the whole-block kernel against the block run module by module, and the fused decoding against the
parallel forward. test_fused.py does the same for Mamba-2.
"""

import pytest
import test_fused
import torch
from test_mamba3 import assert_state, load_golden, run_steps

from ssmttm.backbones import mamba3 as mamba3_module
from ssmttm.backbones.base import Context
from ssmttm.backbones.mamba2 import Mamba2, Mamba2Config
from ssmttm.backbones.mamba3 import Mamba3, Mamba3BlockKernel, Mamba3Config
from ssmttm.conditioning import Conditioning
from ssmttm.lm import MusicLM
from ssmttm.ops import cpu_kernels
from ssmttm.ops.linear import cast_linear_weights
from ssmttm.ops.mamba3_step import mamba3_step_fused, mamba3_step_ref
from ssmttm.presets import load_preset

kernels = test_fused.kernels  # the same fixture: this CPU's build, and an x86-64-v3 one (slow)
_kernels_build = test_fused._kernels_build
_decoding_lm = test_fused._decoding_lm

# The mixers the kernel is held to: SISO as the presets (one group), grouped B/C with the per-head
# norm, and MIMO with and without it. d_state 38: rows that end in a partial 16-wide vector.
MIXERS = {
    "siso": dict(d_state=38, ngroups=1),
    "siso groups norm": dict(d_state=38, is_outproj_norm=True),
    "siso rope 1.0": dict(rope_fraction=1.0),
    "mimo": dict(is_mimo=True),
    "mimo norm": dict(is_mimo=True, is_outproj_norm=True, d_state=38),
}
# bf16: both round the same fp32 values to nearest even, so at most an ulp apart where the fp32
# sums differ in their last bit, and rarely.
STATE_TOL = {torch.float32: 1e-5, torch.bfloat16: 8e-3}


def _mixer(name: str) -> Mamba3:
    """A d_model 32 mixer of 8 heads of 8 channels, two B/C groups unless said, MIMO of rank 3;
    random values everywhere, as in the goldens."""
    torch.manual_seed(0)
    cfg = {"d_state": 16, "headdim": 8, "ngroups": 2, "chunk_size": 8, "mimo_rank": 3, **MIXERS[name]}
    mixer = Mamba3(32, Mamba3Config(**cfg)).eval()
    with torch.no_grad():
        for param_name, param in mixer.named_parameters():
            if not param_name.endswith("proj.weight"):
                param.add_(0.3 * torch.randn_like(param))
    return mixer


def _rows(rows: int) -> None:
    if rows > cpu_kernels.linear_max_rows():
        pytest.skip("this build of the kernels takes at most 4 rows (no AVX-512)")


@pytest.mark.parametrize("rows", [1, 2, 5])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(MIXERS))
def test_kernel_step_equals_the_twin(kernels, rows, state_dtype, name):
    """mamba3_step against mamba3_step_ref from a prefilled state, over several steps: the output
    and every state tensor (the phase, the SSM state, k and v)."""
    mixer = _mixer(name)
    with torch.no_grad():
        _, state = mixer.prefill(torch.randn(rows, 7, 32), Context())
        state = state.with_recurrent_dtype(state_dtype)
        states = {"ref": state.clone(), "fused": state.clone()}
        w = mixer.weights()
        for _ in range(4):  # the phase, k and v carry over
            zxbc = torch.randn(rows, mixer.in_proj.out_features)
            ref, fused = states["ref"], states["fused"]
            y_ref = mamba3_step_ref(zxbc, ref.angle, ref.ssm, ref.k, ref.v, w)
            y = mamba3_step_fused(zxbc, fused.angle, fused.ssm, fused.k, fused.v, w)
            torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    for got, want in zip(states["fused"].tensors(), states["ref"].tensors(), strict=True):
        assert got.dtype == want.dtype
        tol = STATE_TOL[got.dtype]
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    if state_dtype == torch.bfloat16:
        assert (states["fused"].ssm != states["ref"].ssm).float().mean() < 0.01


@pytest.mark.parametrize("name", ["siso rope 1.0", "mimo"])
def test_the_kernel_turns_k_and_q_by_any_phase(kernels, name):
    """The kernel's own sin and cos (a polynomial with AVX-512) against torch's, over the whole
    circle: phases at and beside the quadrant boundaries and spread between, turned by inputs that
    saturate tanh (a turn of up to pi dt). The new k is the turned B, stored in fp32: it must agree
    to a few fp32 ulps, far tighter than the step's output tolerance."""
    mixer = _mixer(name)
    rows = 5 if cpu_kernels.linear_max_rows() >= 5 else 4
    with torch.no_grad():
        _, state = mixer.prefill(torch.randn(rows, 3, 32), Context())
        edges = torch.tensor([0.0, 1e-7, torch.pi / 2, torch.pi, 3 * torch.pi / 2, 2 * torch.pi - 1e-6])
        angle = torch.rand(state.angle.shape) * 2 * torch.pi
        angle.view(-1)[: len(edges)] = edges
        angle.view(-1)[len(edges) : 2 * len(edges)] = edges + torch.pi / 4  # the reduction's |r| = pi/4
        state.angle.copy_(angle)
        zxbc = torch.randn(rows, mixer.in_proj.out_features)
        zxbc[:, -mixer.num_rope_angles :] *= 20
        ref, fused = state.clone(), state.clone()
        w = mixer.weights()
        mamba3_step_ref(zxbc, ref.angle, ref.ssm, ref.k, ref.v, w)
        mamba3_step_fused(zxbc, fused.angle, fused.ssm, fused.k, fused.v, w)
    torch.testing.assert_close(fused.angle, ref.angle, atol=2e-6, rtol=0)
    torch.testing.assert_close(fused.k, ref.k, atol=2e-6, rtol=0)


@pytest.mark.parametrize("path", ["fused", "reference"])
@pytest.mark.parametrize("name", ["mamba3", "mamba3_mimo"])
@pytest.mark.parametrize("split", [0, 1, 17])
def test_both_steps_match_mamba_ssm(golden_dir, monkeypatch, path, name, split):
    """Mamba3.step on the kernel and on the twin: mamba_ssm's outputs and final state, from the
    empty state and after a prefill; the kernel path is the one taken where it builds."""
    golden, mixer = load_golden(golden_dir, name, chunk_size=8)
    calls = []
    monkeypatch.setattr(mamba3_module, "mamba3_step_fused", lambda *a: calls.append(1) or mamba3_step_fused(*a))
    if path == "reference":
        monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    x = golden["input"]
    with torch.no_grad():
        y0, state = mixer.prefill(x[:, :split], Context())
        y1, state = run_steps(mixer, x[:, split:], state)
    assert len(calls) == (x.shape[1] - split if path == "fused" else 0)
    torch.testing.assert_close(torch.cat([y0, y1], 1), golden["output"], atol=1e-4, rtol=0)
    assert_state(state, golden, "state")


@pytest.mark.parametrize("rows", [1, 2, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # the Linears' weights and the state
@pytest.mark.parametrize("name", ["siso", "mimo norm"])
def test_the_mixer_step_decodes_alike_with_and_without_the_kernel(kernels, monkeypatch, rows, dtype, name):
    """Mamba3.step, in_proj and out_proj included, on the kernel and on the twin, with fp32 or bf16
    weights and state."""
    _rows(rows)
    mixer = cast_linear_weights(_mixer(name), dtype)
    with torch.no_grad():
        _, state = mixer.prefill(torch.randn(rows, 6, 32), Context())
        states = {"fused": state.with_recurrent_dtype(dtype), "ref": state.clone().with_recurrent_dtype(dtype)}
        for _ in range(3):
            x = torch.randn(rows, 32)
            y, _ = mixer.step(x, states["fused"])
            with monkeypatch.context() as patch:  # the twin; the Linears on the same kernel either way
                patch.setattr(mamba3_module, "mamba3_step_fused", mamba3_step_ref)
                expected, _ = mixer.step(x, states["ref"])
            torch.testing.assert_close(y, expected, atol=1e-4, rtol=1e-4)
    for got, want in zip(states["fused"].tensors(), states["ref"].tensors(), strict=True):
        torch.testing.assert_close(got, want, atol=STATE_TOL[got.dtype], rtol=STATE_TOL[got.dtype])


# d_model 40 (a remainder after 16-wide vectors), two groups, d_state 38, mlp_hidden 72
SMALL_MAMBA3 = [
    "backbone.n_layers=2",
    "backbone.d_model=40",
    "backbone.mamba3.headdim=8",
    "backbone.mamba3.ngroups=2",
    "backbone.mamba3.d_state=38",
    "backbone.norm_eps=1e-4",
]
SMALL_SIMBA3 = [*SMALL_MAMBA3, "backbone.mlp_hidden=72"]
MIMO = ["backbone.mamba3.is_mimo=true", "backbone.mamba3.mimo_rank=3", "backbone.mamba3.is_outproj_norm=true"]
CROSS = ["conditioning=cross", "backbone.num_heads=5"]
LAYOUTS = [
    ("tiny-simba3", SMALL_SIMBA3),
    ("tiny-mamba3", SMALL_MAMBA3),
    ("tiny-simba3", [*SMALL_SIMBA3, *CROSS]),
    ("tiny-simba3", [*SMALL_SIMBA3, *CROSS, *MIMO]),
]


def _lm(preset: str, overrides: list[str]) -> MusicLM:
    torch.manual_seed(0)
    lm = MusicLM(load_preset(preset, overrides)).eval()
    with torch.no_grad():  # random values in the mixers' vectors too, as in the goldens
        for name, param in lm.backbone.named_parameters():
            if ".mixer." in name and not name.endswith("proj.weight"):
                param.add_(0.3 * torch.randn_like(param))
    return lm


@pytest.mark.parametrize("rows", [1, 2, 5])
# Packed weights ("int8", "int4") with an fp32 state: their activations are rounded to int8, so an
# fp32 difference between the paths that lands on a rounding boundary moves a logit by 1e-2; a bf16
# state's ulp-sized differences (8e-3) would land there often.
@pytest.mark.parametrize(
    ("weight_dtype", "state_dtype"),
    [(None, None), (torch.bfloat16, torch.bfloat16), ("int8", None), ("int4", None)],
)
@pytest.mark.parametrize(("preset", "overrides"), LAYOUTS)
def test_block_kernel_decodes_like_the_modules(
    kernels, monkeypatch, rows, weight_dtype, state_dtype, preset, overrides
):
    """A whole Mamba-3 or SiMBA-3 block in one C++ call against the same block run module by module
    (on the PyTorch twin): logits and every state tensor, over several steps."""
    _rows(rows)
    lm = _decoding_lm(_lm(preset, overrides), weight_dtype)
    with torch.no_grad():
        _, state = lm.prefill(Conditioning(torch.randn(rows, 5, lm.cfg.text_dim)))
        if state_dtype is not None:
            state = state.with_recurrent_dtype(state_dtype)
        states = {"fused": state.clone(), "modules": state.clone()}
        calls = []
        step = Mamba3BlockKernel.step
        monkeypatch.setattr(Mamba3BlockKernel, "step", lambda self, *a: calls.append(1) or step(self, *a))
        for _ in range(3):
            tokens = torch.randint(0, lm.cfg.cardinality, (rows, lm.cfg.num_codebooks))
            logits, states["fused"] = lm.step(tokens, states["fused"])
            with monkeypatch.context() as patch:  # the modules, on the twin; the Linears as they were
                patch.setattr(Mamba3BlockKernel, "applies", lambda *_: False)
                patch.setattr(mamba3_module, "mamba3_step_fused", mamba3_step_ref)
                expected, states["modules"] = lm.step(tokens, states["modules"])
            torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    assert len(calls) == 3 * len(lm.backbone.layers)
    for got, want in zip(states["fused"].tensors(), states["modules"].tensors(), strict=True):
        assert got.dtype == want.dtype
        tol = STATE_TOL.get(got.dtype, 0)
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)


@pytest.mark.parametrize(("preset", "overrides"), LAYOUTS)
@pytest.mark.parametrize("split", [0, 1, 6])
def test_fused_decoding_equals_the_parallel_forward(preset, overrides, split):
    """Teacher-forced: prefill, then steps through the block kernel, give the forward's logits
    within 1e-4 (fp32)."""
    lm = _lm(preset, overrides)
    seq = torch.randint(0, lm.cfg.vocab_size, (2, lm.cfg.num_codebooks, 13))
    text = Conditioning(torch.randn(2, 5, lm.cfg.text_dim))
    assert all(isinstance(block._fused_step, Mamba3BlockKernel) for block in lm.backbone.layers)
    with torch.no_grad():
        full = lm(seq, text)
        logits, state = lm.prefill(text, seq[..., :split])
        columns = [logits]
        for t in range(split, seq.shape[-1]):
            x = state.backbone.layers[0]
            assert lm.backbone.layers[0]._fused_step.applies(torch.zeros(2, 40), x, False)
            logits, state = lm.step(seq[:, :, t], state)
            columns.append(logits)
    torch.testing.assert_close(torch.stack(columns, dim=2), full[:, :, split:], atol=1e-4, rtol=0)


def test_block_kernel_is_not_used_where_it_cannot_apply():
    """The conditions of Mamba-2's block kernel, and a phase, k or v that is not fp32."""
    lm = _lm("tiny-simba3", SMALL_SIMBA3)
    block = lm.backbone.layers[0]
    with torch.no_grad():
        _, state = lm.prefill(Conditioning(torch.randn(2, 5, lm.cfg.text_dim)))
    x, layer_state = torch.randn(2, 40), state.backbone.layers[0]
    kernel = block._fused_step
    with torch.no_grad():
        assert kernel.applies(x, layer_state, False)
        assert not kernel.applies(x.double(), layer_state, False)
        assert not kernel.applies(torch.randn(cpu_kernels.linear_max_rows() + 1, 40), layer_state, False)
        assert not kernel.applies(x, layer_state, True)  # training: dropout
        layer_state.mixer.k = layer_state.mixer.k.double()
        assert not kernel.applies(x, layer_state, False)
        layer_state.mixer.k = layer_state.mixer.k.float()
        block.mixer.D.data = block.mixer.D.data.bfloat16()  # a mixer vector the kernel reads in fp32 only
        assert not kernel.applies(x, layer_state, False)
        block.mixer.D.data = block.mixer.D.data.float()
        assert kernel.applies(x, layer_state, False)
    assert not kernel.applies(x, layer_state, False)  # gradients wanted


# -- wrong arguments ----------------------------------------------------------------------------------
# Every size the kernels index with is checked before anything is read or written: a mismatch is a
# RuntimeError naming the argument, and the state is left as it was.


def _step_args(name: str = "mimo norm", rows: int = 2) -> dict:
    mixer = _mixer(name)
    with torch.no_grad():
        _, state = mixer.prefill(torch.randn(rows, 4, 32), Context())
    return dict(
        zxbc=torch.randn(rows, mixer.in_proj.out_features),
        angle_state=state.angle,
        ssm_state=state.ssm,
        k_state=state.k,
        v_state=state.v,
        **mixer.weights()._asdict(),
    )


# tiny MIMO: H 8, P 8, N 38, R 3, S 9, ngroups 2: zxbc 2 x 64 + 2 x 228 + 24 + 9 = 617 wide
STEP_MISMATCHES = [
    ("zxbc width", dict(zxbc=torch.randn(2, 616)), r"zxbc's width \(616\) must be z 64 \+ x 64 \+ B 228 .* = 617"),
    ("zxbc rows", dict(zxbc=torch.randn(1, 617)), r"zxbc has 1 rows, angle_state .* \(2, 8, 9\)"),
    ("zxbc dtype", dict(zxbc=torch.randn(2, 617).double()), r"zxbc must be a contiguous fp32 .* not Double"),
    ("zxbc strided", dict(zxbc=torch.randn(617, 2).T), r"zxbc must be a contiguous .* strided"),
    ("ssm_state dtype", dict(ssm_state=torch.zeros(2, 8, 8, 38).half()), r"ssm_state .*Half"),
    ("ssm_state odd d_state", dict(ssm_state=torch.zeros(2, 8, 8, 37)), r"d_state \(37\) must be even"),
    ("k_state heads", dict(k_state=torch.zeros(2, 3, 7, 38)), r"k_state .*\(2, \*, 8, 38\)"),
    ("k_state bf16", dict(k_state=torch.zeros(2, 3, 8, 38).bfloat16()), r"k_state must be a contiguous fp32"),
    ("v_state", dict(v_state=torch.zeros(2, 8, 7)), r"v_state .*\(2, 8, 8\)"),
    ("angle_state strided", dict(angle_state=torch.zeros(2, 9, 8).transpose(1, 2)), r"angle_state .* strided"),
    ("angle_state too many", dict(angle_state=torch.zeros(2, 8, 20)), r"20 angles must turn between 1 and"),
    ("ngroups", dict(ngroups=3), r"ngroups \(3\) must divide the 8 heads"),
    ("mimo_o missing", dict(mimo_o=None), r"a MIMO layer needs all of mimo_x, mimo_z and mimo_o"),
    ("mimo_x shape", dict(mimo_x=torch.ones(8, 2, 8)), r"mimo_x .*\(8, 3, 8\)"),
    ("dt_bias", dict(dt_bias=torch.zeros(7)), r"dt_bias .*\(8,\)"),
    ("B_norm", dict(B_norm=torch.ones(37)), r"B_norm .*\(38,\)"),
    ("C_norm dtype", dict(C_norm=torch.ones(38).double()), r"C_norm .*Double"),
    ("B_bias", dict(B_bias=torch.ones(8, 1, 38)), r"B_bias .*\(8, 3, 38\)"),
    ("C_bias", dict(C_bias=torch.ones(8, 3, 39)), r"C_bias .*\(8, 3, 38\)"),
    ("D", dict(D=torch.ones(8, 1)), r"D .*\(8,\)"),
    ("norm_weight", dict(norm_weight=torch.ones(63)), r"norm_weight .*\(64,\)"),
]


@pytest.mark.parametrize(("case", "change", "pattern"), STEP_MISMATCHES, ids=[c[0] for c in STEP_MISMATCHES])
def test_a_wrong_argument_to_the_step_kernel_is_a_clear_error(case, change, pattern):
    args = {**_step_args(), **change}
    state = [args[k] for k in ("angle_state", "ssm_state", "k_state", "v_state")]
    before = [t.clone() for t in state]
    with pytest.raises(RuntimeError, match="mamba3_step: .*" + pattern):
        cpu_kernels.extension().mamba3_step(**args)
    assert all(torch.equal(a, b) for a, b in zip(before, state, strict=True)), "a refused call changed the state"


def test_a_siso_state_with_ranks_is_refused():
    args = {**_step_args("siso"), "k_state": torch.zeros(2, 2, 8, 38)}
    with pytest.raises(RuntimeError, match=r"k_state has 2 ranks; a SISO layer \(no mimo_x\) has 1"):
        cpu_kernels.extension().mamba3_step(**args)


def test_a_batch_mismatch_is_the_same_value_error_on_both_paths():
    args = _step_args("siso")
    weights = _mixer("siso").weights()
    state = (args["angle_state"], args["ssm_state"], args["k_state"], args["v_state"])
    messages = []
    for step in (mamba3_step_ref, mamba3_step_fused):
        with pytest.raises(ValueError, match="decoding step: 1 input rows on a state of 2 rows") as error:
            step(args["zxbc"][:1], *state, weights)
        messages.append(str(error.value))
    assert messages[0] == messages[1]


# mamba3_block_step's arguments by name, in the order Mamba3BlockKernel.step passes them
BLOCK_ARGS = (
    *("x", "angle_state", "ssm_state", "k_state", "v_state", "keys", "values", "key_mask", "mixer_norm"),
    *("mixer_eps", "in_proj", "in_bias", "ngroups", "dt_bias", "a_floor", "B_norm", "B_eps", "C_norm", "C_eps"),
    *("B_bias", "C_bias", "D", "mimo_x", "mimo_z", "mimo_o", "norm_weight", "norm_eps", "out_proj", "out_bias"),
    *("cross_norm", "cross_eps", "q_proj", "cross_out", "mlp_norm", "mlp_eps", "fc1", "fc1_bias", "fc2", "fc2_bias"),
)


def _block_args(**changes) -> tuple[dict, list[torch.Tensor]]:
    """mamba3_block_step's arguments for a MIMO SiMBA-3 block with cross-attention, at 2 rows."""
    lm = _lm("tiny-simba3", [*SMALL_SIMBA3, *CROSS, *MIMO])
    with torch.no_grad():
        _, state = lm.prefill(Conditioning(torch.randn(2, 6, lm.cfg.text_dim)))
    layer = state.backbone.layers[0]
    m = layer.mixer
    values = (torch.randn(2, 40), m.angle, m.ssm, m.k, m.v, layer.cross.k, layer.cross.v, layer.cross.mask)
    args = dict(zip(BLOCK_ARGS, (*values, *lm.backbone.layers[0]._fused_step.weights), strict=True))
    return {**args, **changes}, [m.angle, m.ssm, m.k, m.v]


BLOCK_MISMATCHES = [
    ("x rows", dict(x=torch.randn(1, 40)), r"x has 1 rows, angle_state"),
    ("x width", dict(x=torch.randn(2, 41)), r"x .*\(\*, 40\), not Float \(2, 41\)"),
    ("in_proj width", dict(in_proj=torch.randn(100, 40)), r"in_proj's outputs \(100\) must be z 80"),
    ("out_proj", dict(out_proj=torch.randn(40, 79)), r"out_proj .*\(40, 80\)"),
    ("norm_weight", dict(norm_weight=torch.ones(3)), r"norm_weight .*\(80,\)"),
    ("keys rows", dict(keys=torch.randn(1, 5, 6, 8), values=torch.randn(1, 5, 6, 8)), r"keys .*\(2, \*, \*, \*\)"),
    ("fc2", dict(fc2=torch.randn(40, 71)), r"fc2 .*\(40, 72\)"),
    ("an MLP without fc2", dict(fc2=None), r"an MLP needs its mlp_norm, fc1 and fc2"),
]


@pytest.mark.parametrize(("case", "change", "pattern"), BLOCK_MISMATCHES, ids=[c[0] for c in BLOCK_MISMATCHES])
def test_a_wrong_argument_to_the_block_kernel_is_a_clear_error(case, change, pattern):
    args, state = _block_args(**change)
    before = [t.clone() for t in state]
    with pytest.raises(RuntimeError, match="mamba3_block_step: .*" + pattern):
        cpu_kernels.extension().mamba3_block_step(**args)
    assert all(torch.equal(a, b) for a, b in zip(before, state, strict=True)), "a refused call changed the state"


def test_the_block_kernel_takes_its_arguments_by_name():
    """The names in BLOCK_ARGS are the kernel's, in the order Mamba3BlockKernel.step passes them."""
    args, _ = _block_args()
    lm_args, _ = _block_args()
    positional = [lm_args[name] for name in BLOCK_ARGS]
    with torch.no_grad():
        by_name = cpu_kernels.extension().mamba3_block_step(**args)
        in_order = cpu_kernels.extension().mamba3_block_step(*positional)
    torch.testing.assert_close(by_name, in_order, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["mamba2", "siso", "mimo"])
def test_a_step_autograd_records_has_the_parallel_forwards_gradients(name):
    """The kernels' outputs carry no gradient, so a mixer step under autograd takes the PyTorch twin:
    the last position's gradients through prefill and step equal those through the forward."""
    if name == "mamba2":
        torch.manual_seed(0)
        mixer = Mamba2(32, Mamba2Config(d_state=16, headdim=8, chunk_size=8))
    else:
        mixer = _mixer(name)
    params = [p for p in mixer.parameters() if p.requires_grad]
    x = torch.randn(2, 7, 32)
    _, state = mixer.prefill(x[:, :6], Context())
    y, _ = mixer.step(x[:, 6], state)
    assert y.requires_grad
    stepped = torch.autograd.grad(y.square().sum(), params)
    parallel = torch.autograd.grad(mixer(x, Context())[:, 6].square().sum(), params)
    for got, want in zip(stepped, parallel, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

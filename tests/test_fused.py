"""The C++ decoding kernels against their PyTorch reference twins."""

import pytest
import torch

from ssmttm.backbones.attention import CrossState
from ssmttm.backbones.blocks import Block, BlockState
from ssmttm.config import load_preset
from ssmttm.generation import Generator
from ssmttm.lm import MusicLM
from ssmttm.ops import cpu_kernels
from ssmttm.ops.linear import _kernel_applies, linear
from ssmttm.ops.mamba2_step import mamba2_step_fused, mamba2_step_ref
from ssmttm.ops.selective_scan import selective_scan_step
from ssmttm.ops.ssd import ssd_step

pytestmark = pytest.mark.slow  # builds the C++ extension once (about half a minute)


@pytest.fixture(autouse=True)
def _kernels_build():
    assert cpu_kernels.available(), "the kernels should build wherever the test suite runs"


@pytest.mark.parametrize(("batch", "ngroups", "d_state"), [(1, 1, 16), (3, 2, 16), (2, 1, 37)])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_fused_step_equals_reference(batch, ngroups, d_state, state_dtype):
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
def test_linear_kernel_equals_fp64_matmul_on_the_same_weights(rows, with_bias, dtype, width):
    if rows > cpu_kernels.linear_max_rows():
        pytest.skip("this CPU's kernel takes at most 4 rows (no AVX-512)")
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
def test_kernel_activations_are_as_exact_as_torchs(name):
    # block_step's silu and gelu (vectorised exp and erf with AVX-512) against the float64 function,
    # from far in the saturated tails through zero, 30003 values (a masked 3-wide tail). They may
    # be off by a few fp32 roundings, as torch's own are, and no more: a polynomial coefficient off
    # by 1e-4 fails here long before it moves a decoded logit.
    ref = {"silu": torch.nn.functional.silu, "gelu": torch.nn.functional.gelu}[name]
    g = torch.Generator().manual_seed(0)
    tails = torch.linspace(-120, 120, 20001)
    x = torch.cat([tails, torch.randn(9999, generator=g) * 3, torch.tensor([0.0, 1e-30, -1e-40])])
    y = cpu_kernels.extension().activation(x, name)
    exact = ref(x.double())
    assert y.shape == x.shape and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), exact, atol=1.5e-6, rtol=5e-7)
    torch.testing.assert_close(ref(x).double(), exact, atol=1.5e-6, rtol=5e-7)  # torch's meets the same bound


def test_more_rows_than_the_kernel_takes_go_to_the_matmul():
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
@pytest.mark.parametrize(("weight_dtype", "state_dtype"), [(None, None), (torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize(
    ("preset", "overrides"),
    [
        ("tiny-simba", SMALL_SIMBA),
        ("tiny-mamba2", SMALL_MAMBA2),
        ("tiny-simba", [*SMALL_SIMBA, "conditioning=cross", "backbone.num_heads=5"]),  # the demo's layout
    ],
)
def test_block_step_kernel_decodes_like_the_modules(monkeypatch, rows, weight_dtype, state_dtype, preset, overrides):
    """A whole SiMBA or Mamba-2 block in one C++ call against the same block run module by module
    (each of whose kernels has its own test above): logits and every state tensor, over several steps."""
    if rows > cpu_kernels.linear_max_rows():
        pytest.skip("this CPU's kernels take at most 4 rows (no AVX-512)")
    torch.manual_seed(0)
    lm = Generator(MusicLM(load_preset(preset, overrides)), weight_dtype=weight_dtype).lm
    with torch.no_grad():
        _, state = lm.prefill(torch.randn(rows, 5, lm.cfg.text_dim))
        if state_dtype is not None:
            state = state.with_recurrent_dtype(state_dtype)
        states = {"fused": state.clone(), "modules": state.clone()}
        fused_calls = 0
        original = Block._step_fused

        def counted(self, x, mixer_state):
            nonlocal fused_calls
            fused_calls += 1
            return original(self, x, mixer_state)

        monkeypatch.setattr(Block, "_step_fused", counted)
        for _ in range(3):
            tokens = torch.randint(0, lm.cfg.cardinality, (rows, lm.cfg.num_codebooks))
            logits, states["fused"] = lm.step(tokens, states["fused"])
            with monkeypatch.context() as patch:
                patch.setattr(Block, "_fused_step_applies", lambda *_: False)
                expected, states["modules"] = lm.step(tokens, states["modules"])
            torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    assert fused_calls == 3 * len(lm.backbone.layers)
    for got, want in zip(states["fused"].tensors(), states["modules"].tensors(), strict=True):
        assert got.dtype == want.dtype
        tolerance = 1e-5 if got.dtype == torch.float32 else 8e-3  # bf16: an ulp where fp32 sums differ
        torch.testing.assert_close(got, want, atol=tolerance, rtol=tolerance)


def test_block_step_kernel_is_not_used_where_it_cannot_apply():
    lm = MusicLM(load_preset("tiny-simba", SMALL_SIMBA)).eval()
    block = lm.backbone.layers[0]
    with torch.no_grad():
        _, state = lm.prefill(torch.randn(2, 5, lm.cfg.text_dim))
    x, layer_state = torch.randn(2, 40), state.backbone.layers[0]
    with torch.no_grad():
        assert block._fused_step_applies(x, layer_state)
        assert not block._fused_step_applies(x.double(), layer_state)
        assert not block._fused_step_applies(torch.randn(cpu_kernels.linear_max_rows() + 1, 40), layer_state)
        block.mlp.fc1.half()  # a weight dtype the kernel does not read
        assert not block._fused_step_applies(x, layer_state)
        block.mlp.fc1.float()
        block.train()  # dropout
        assert not block._fused_step_applies(x, layer_state)
        block.eval()
    assert not block._fused_step_applies(x, layer_state)  # gradients wanted
    transformer = MusicLM(load_preset("tiny-transformer")).eval()
    with torch.no_grad():
        _, state = transformer.prefill(torch.randn(2, 5, transformer.cfg.text_dim))
        x = torch.randn(2, transformer.cfg.backbone.d_model)
        assert not transformer.backbone.layers[0]._fused_step_applies(x, state.backbone.layers[0])


def test_block_step_kernel_attends_like_the_modules_when_text_is_masked():
    """Cross-attention over a padded caption, and over a row whose every text position is masked
    (scaled_dot_product_attention gives zeros there; so must the kernel)."""
    torch.manual_seed(0)
    lm = MusicLM(load_preset("tiny-simba", [*SMALL_SIMBA, "conditioning=cross", "backbone.num_heads=5"])).eval()
    with torch.no_grad():
        _, state = lm.prefill(torch.randn(3, 6, lm.cfg.text_dim))
        layer = state.backbone.layers[1]
        mask = torch.ones(3, layer.cross.k.shape[2], dtype=torch.bool)
        mask[1, 2:] = False
        mask[2] = False
        layer = BlockState(layer.mixer, CrossState(layer.cross.k, layer.cross.v, mask))
        block, x = lm.backbone.layers[1], torch.randn(3, 40)
        assert block._fused_step_applies(x, layer)
        fused, _ = block.step(x, layer.clone())
        expected, _ = block._step_modules(x, layer.clone())
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)

"""The Mamba-3 mixer: the same numbers as mamba_ssm's `Mamba3` (SISO and MIMO), its step equal to
its forward, its scan equal to a loop written from the recurrence, masks, causality and FLOPs.

The fixtures in tests/golden/mamba3*_golden.* were produced by mamba_ssm's module with random (not
initial) parameter values; their JSON gives the configuration and the equations.
"""

import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ssmttm.backbones.base import Context
from ssmttm.backbones.mamba3 import Mamba3, Mamba3Config, mamba3_flops, mamba3_state_bytes
from ssmttm.ops.ssd3 import ssd3_chunked, trapezoid_weights

GOLDENS = ["mamba3", "mamba3_mimo"]
ATOL = 1e-4
STATE_FIELDS = {"angle": "angle_dt_state", "ssm": "ssm_state", "k": "k_state", "v": "v_state"}


def load_golden(golden_dir, name, chunk_size=None):
    """The golden tensors and the mixer built from the JSON's configuration, its weights loaded."""
    from safetensors.torch import load_file

    tensors = load_file(golden_dir / f"{name}_golden.safetensors")
    config = dict(json.loads((golden_dir / f"{name}_golden.json").read_text())["config"])
    d_model = config.pop("d_model")
    config["a_floor"] = config.pop("A_floor")
    # Fused or not, mamba_ssm's out-proj norm computes the same function; ours has one path.
    config.pop("fuse_pregate_headwise_norm")
    if chunk_size is not None:
        config["chunk_size"] = chunk_size
    mixer = Mamba3(d_model, Mamba3Config(**config)).eval()
    weights = {k.removeprefix("weights."): v for k, v in tensors.items() if k.startswith("weights.")}
    mixer.load_state_dict(weights, strict=True)  # mamba_ssm's state dict loads unchanged
    return tensors, mixer


def assert_state(state, golden, prefix):
    """Each field against golden[prefix.<mamba_ssm name>]; the phase modulo 2 pi, as it is one."""
    for field, name in STATE_FIELDS.items():
        ours, theirs = getattr(state, field), golden[f"{prefix}.{name}"]
        if field == "angle":
            ours = theirs + torch.remainder(ours - theirs + math.pi, 2 * math.pi) - math.pi
        torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0, msg=lambda m, f=field: f"{prefix} {f}: {m}")


def run_steps(mixer, x, state):
    """Step through x (B, T, D) from `state`; the outputs (B, T, D) and the final state."""
    ys = []
    for t in range(x.shape[1]):
        y, state = mixer.step(x[:, t], state)
        ys.append(y)
    return torch.stack(ys, 1) if ys else x[:, :0], state


@pytest.mark.parametrize("name", GOLDENS)
@pytest.mark.parametrize("chunk_size", [5, 16, 64])
def test_forward_matches_mamba_ssm(golden_dir, name, chunk_size):
    """Output and the state the forward leaves; chunk sizes that do and do not divide T."""
    golden, mixer = load_golden(golden_dir, name, chunk_size)
    with torch.no_grad():
        y, state = mixer.prefill(golden["input"], Context())
        torch.testing.assert_close(mixer(golden["input"], Context()), y, atol=0, rtol=0)
    torch.testing.assert_close(y, golden["output"], atol=ATOL, rtol=0)
    assert_state(state, golden, "forward_state")


@pytest.mark.parametrize("name", GOLDENS)
def test_steps_from_empty_match_mamba_ssm(golden_dir, name):
    golden, mixer = load_golden(golden_dir, name)
    x = golden["input"]
    with torch.no_grad():
        y, state = run_steps(mixer, x, mixer.empty_state(x.shape[0], x))
    torch.testing.assert_close(y, golden["step_output"], atol=ATOL, rtol=0)
    assert_state(state, golden, "state")


@pytest.mark.parametrize("name", GOLDENS)
def test_projections_match_mamba_ssm_intermediates(golden_dir, name):
    """dt, A dt and trap, which the fixture kept for debugging: a wrong split of in_proj shows here."""
    golden, mixer = load_golden(golden_dir, name)
    with torch.no_grad():
        p = mixer._project(mixer.in_proj(golden["input"]), None)
    for ours, key in [(p.dt, "DT"), (p.log_decay, "ADT"), (p.trap, "trap")]:
        torch.testing.assert_close(ours.transpose(1, 2), golden[f"intermediate.{key}"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", GOLDENS)
@pytest.mark.parametrize("split", [0, 1, 17, -1])
def test_steps_continue_the_forward(golden_dir, name, split):
    """Prefill `split` positions, then step: the golden outputs throughout, and its final state."""
    golden, mixer = load_golden(golden_dir, name, chunk_size=8)
    x = golden["input"]
    split = split % x.shape[1]
    with torch.no_grad():
        y0, state = mixer.prefill(x[:, :split], Context())
        y1, state = run_steps(mixer, x[:, split:], state)
    torch.testing.assert_close(torch.cat([y0, y1], 1), golden["output"], atol=ATOL, rtol=0)
    assert_state(state, golden, "state")


def test_prefill_of_nothing_is_the_empty_state(golden_dir):
    golden, mixer = load_golden(golden_dir, "mamba3_mimo")
    x = golden["input"][:, :0]
    y, state = mixer.prefill(x, Context())
    assert y.shape == x.shape
    for ours, empty in zip(state.tensors(), mixer.empty_state(2, x).tensors(), strict=True):
        assert ours.shape == empty.shape and not ours.any()


@pytest.mark.parametrize("name", GOLDENS)
def test_every_parameter_changes_the_output(golden_dir, name):
    """No parameter is loaded and then ignored: nudging any one of them moves the output."""
    golden, mixer = load_golden(golden_dir, name)
    x = golden["input"]
    for param_name, param in mixer.named_parameters():
        with torch.no_grad():
            param.add_(0.05)
            moved = (mixer(x, Context()) - golden["output"]).abs().max()
            param.sub_(0.05)
        assert moved > 100 * ATOL, param_name


def tiny(is_mimo=False, **overrides):
    cfg = dict(d_state=16, headdim=8, ngroups=2, chunk_size=8, is_mimo=is_mimo, mimo_rank=3, **overrides)
    mixer = Mamba3(32, Mamba3Config(**cfg)).eval()
    with torch.no_grad():  # random values everywhere, as in the goldens: the Linears' are already
        for name, param in mixer.named_parameters():
            if not name.endswith("proj.weight"):
                param.add_(0.3 * torch.randn_like(param))
    return mixer


@pytest.mark.parametrize("is_mimo", [False, True])
@pytest.mark.parametrize("is_outproj_norm", [False, True])
def test_steps_equal_the_forward_on_tiny_mixers(is_mimo, is_outproj_norm):
    """Also with the out-proj norm and grouped B/C, which the goldens do not cover."""
    mixer = tiny(is_mimo, is_outproj_norm=is_outproj_norm)
    x = torch.randn(2, 21, 32)
    with torch.no_grad():
        y = mixer(x, Context())
        for split in (0, 1, 9, 20):
            y0, state = mixer.prefill(x[:, :split], Context())
            y1, _ = run_steps(mixer, x[:, split:], state)
            torch.testing.assert_close(torch.cat([y0, y1], 1), y, atol=ATOL, rtol=0)


@pytest.mark.parametrize("is_mimo", [False, True])
def test_masked_positions_are_absent(is_mimo):
    """A masked position feeds nothing and leaves the state alone, the pending (1 - trap) share of
    the previous input included: the real positions' outputs and the final state are those of the
    sequence with the masked positions left out."""
    mixer = tiny(is_mimo)
    x = torch.randn(3, 19, 32)
    keep = torch.rand(3, 19) > 0.4
    keep[0, :4] = False  # left padding
    keep[1, -3:] = False  # a masked tail
    keep[2] = False  # nothing real at all: the empty state
    with torch.no_grad():
        y, state = mixer.prefill(x, Context(mask=keep))
        for row in range(3):
            y_ref, state_ref = mixer.prefill(x[row : row + 1, keep[row]], Context())
            torch.testing.assert_close(y[row : row + 1, keep[row]], y_ref, atol=ATOL, rtol=0)
            for ours, ref in zip(state.select([row]).tensors(), state_ref.tensors(), strict=True):
                torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_changing_the_future_leaves_the_past():
    mixer = tiny(is_mimo=True)
    x = torch.randn(1, 30, 32)
    changed = x.clone()
    changed[:, 13:] = torch.randn(1, 17, 32)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x, Context())[:, :13], mixer(changed, Context())[:, :13], atol=0, rtol=0)


def test_a_bf16_state_steps_close_to_fp32():
    mixer = tiny(is_mimo=True)
    x = torch.randn(2, 12, 32)
    with torch.no_grad():
        _, state = mixer.prefill(x[:, :6], Context())
        y32, _ = run_steps(mixer, x[:, 6:], state.clone())
        y16, state16 = run_steps(mixer, x[:, 6:], state.with_recurrent_dtype(torch.bfloat16))
    assert state16.ssm.dtype == torch.bfloat16
    torch.testing.assert_close(y16, y32, atol=0.05, rtol=0.02)


def test_gradients_reach_every_parameter():
    mixer = tiny(is_mimo=True, is_outproj_norm=True).train()
    mixer(torch.randn(2, 17, 32), Context()).square().mean().backward()
    for name, param in mixer.named_parameters():
        assert param.grad is not None and param.grad.isfinite().all() and param.grad.abs().sum() > 0, name


# -- the scan against a loop written from the recurrence ---------------------------------------------


def scan_loop(v, q, k, log_decay, dt, trap, keep):
    """S_t = e^a S_{t-1} + e^a (1 - trap) dt sum_r v_prev^r k_prev^rT + trap dt sum_r v^r k^rT,
    y^r = S q^r, in float64; a masked position leaves S, k_prev and v_prev as they are."""
    b, length, _, h, p = v.shape
    state = torch.zeros(b, h, p, q.shape[-1], dtype=torch.float64)
    v_prev, k_prev = torch.zeros_like(v[:, 0], dtype=torch.float64), torch.zeros_like(k[:, 0], dtype=torch.float64)
    ys = []
    for t in range(length):
        vt, kt, qt = v[:, t].double(), k[:, t].double(), q[:, t].double()  # (b, r, h, .)
        alpha = torch.exp(log_decay[:, t].double())  # (b, h)
        beta = (1 - trap[:, t].double()) * dt[:, t].double() * alpha
        gamma = trap[:, t].double() * dt[:, t].double()
        new = (
            alpha[..., None, None] * state
            + beta[..., None, None] * torch.einsum("brhp,brhn->bhpn", v_prev, k_prev)
            + gamma[..., None, None] * torch.einsum("brhp,brhn->bhpn", vt, kt)
        )
        real = keep[:, t].view(b, 1, 1, 1)
        state = torch.where(real, new, state)
        v_prev, k_prev = torch.where(real, vt, v_prev), torch.where(real, kt, k_prev)
        ys.append(torch.einsum("bhpn,brhn->brhp", state, qt))
    return torch.stack(ys, 1), state


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("chunk", [1, 4, 7, 64])
@pytest.mark.parametrize("masked", [False, True])
def test_chunked_scan_equals_the_loop(rank, chunk, masked):
    b, length, h, p, n = 2, 23, 3, 4, 6
    v, q, k = torch.randn(b, length, rank, h, p), torch.randn(b, length, rank, h, n), torch.randn(b, length, rank, h, n)
    dt, trap = torch.rand(b, length, h) * 0.5 + 0.01, torch.rand(b, length, h)
    keep = torch.rand(b, length) > 0.3 if masked else torch.ones(b, length, dtype=torch.bool)
    log_decay = -torch.rand(b, length, h) * 2 * dt * keep[..., None]  # a masked position does not decay
    w, gamma = trapezoid_weights(dt, trap, keep if masked else None)
    y, final = ssd3_chunked(v, q, k, log_decay, w, gamma, chunk)
    y_ref, final_ref = scan_loop(v, q, k, log_decay, dt, trap, keep)
    real = keep[:, :, None, None, None].expand_as(y)
    torch.testing.assert_close(y.double()[real], y_ref[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final.double(), final_ref, atol=1e-5, rtol=1e-5)


# -- what the registry will ask of it ---------------------------------------------------------------


@pytest.mark.parametrize("is_mimo", [False, True])
@pytest.mark.parametrize("length", [40, 64])
def test_flops_match_the_counter(is_mimo, length):
    mixer = tiny(is_mimo)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        mixer(torch.randn(1, length, 32), Context())
    counted = counter.get_total_flops()
    assert mamba3_flops(32, mixer.cfg, length) == pytest.approx(counted, rel=0.02)


@pytest.mark.parametrize("is_mimo", [False, True])
def test_state_bytes_are_the_state_tensors(is_mimo):
    mixer = tiny(is_mimo)
    _, state = mixer.prefill(torch.randn(1, 5, 32), Context())
    assert mamba3_state_bytes(32, mixer.cfg, torch.float32) == sum(t.nbytes for t in state.tensors())

"""The chunked scans against naive per-step loops written straight from the recurrences."""

import pytest
import torch

from ssmttm.ops.conv import causal_conv1d, causal_conv1d_step, conv_window
from ssmttm.ops.selective_scan import doubling_scan, selective_scan_chunked, selective_scan_step
from ssmttm.ops.ssd import ssd_chunked, ssd_step


def ssd_loop(x, dt, A, B, C, state=None):
    """S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T;  y_t = S_t C_t   (per head; groups shared)."""
    b, length, h, p = x.shape
    g, n = B.shape[-2:]
    heads_per_group = h // g
    state = torch.zeros(b, h, p, n, dtype=torch.float64) if state is None else state.double()
    ys = []
    for t in range(length):
        Bt = B[:, t].double().repeat_interleave(heads_per_group, dim=1)  # (b, h, n)
        Ct = C[:, t].double().repeat_interleave(heads_per_group, dim=1)
        decay = torch.exp(dt[:, t].double() * A.double())  # (b, h)
        state = (
            decay[..., None, None] * state + (dt[:, t, :, None].double() * x[:, t].double())[..., None] * Bt[:, :, None]
        )
        ys.append((state * Ct[:, :, None]).sum(-1))
    return torch.stack(ys, 1), state


def selective_loop(u, dt, A, B, C, state=None):
    """h_t = exp(dt_t A) * h_{t-1} + dt_t u_t B_t;  y_t = h_t . C_t   (per channel)."""
    b, length, d = u.shape
    state = torch.zeros(b, d, A.shape[-1], dtype=torch.float64) if state is None else state.double()
    ys = []
    for t in range(length):
        state = torch.exp(dt[:, t, :, None].double() * A.double()) * state + (
            dt[:, t, :, None].double() * u[:, t, :, None].double() * B[:, t, None, :].double()
        )
        ys.append((state * C[:, t, None, :].double()).sum(-1))
    return torch.stack(ys, 1), state


def ssd_inputs(b=2, length=23, h=4, p=3, g=2, n=5):
    x = torch.randn(b, length, h, p)
    dt = torch.rand(b, length, h) * 0.5 + 0.01
    A = -torch.rand(h) * 3 - 0.1
    return x, dt, A, torch.randn(b, length, g, n), torch.randn(b, length, g, n)


@pytest.mark.parametrize("chunk", [1, 4, 5, 8, 23, 64])
@pytest.mark.parametrize("with_initial", [False, True])
def test_ssd_chunked_equals_loop(chunk, with_initial):
    x, dt, A, B, C = ssd_inputs()
    initial = torch.randn(2, 4, 3, 5) if with_initial else None
    y, final = ssd_chunked(x, dt, A, B, C, chunk, initial_state=initial)
    y_ref, final_ref = ssd_loop(x, dt, A, B, C, initial)
    torch.testing.assert_close(y.double(), y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(final.double(), final_ref, atol=1e-4, rtol=1e-4)


def test_ssd_strong_decay_stays_finite():
    """Large cumulative decays within a chunk: segsum must not overflow into inf - inf."""
    x, dt, A, B, C = ssd_inputs(length=40)
    y, final = ssd_chunked(x, dt * 30, A * 10, B, C, 16)
    y_ref, final_ref = ssd_loop(x, dt * 30, A * 10, B, C)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(final.double(), final_ref, atol=1e-4, rtol=1e-4)


def test_ssd_step_equals_loop():
    x, dt, A, B, C = ssd_inputs(length=6)
    state = torch.zeros(2, 4, 3, 5)
    ys = [ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t]) for t in range(6)]
    y_ref, final_ref = ssd_loop(x, dt, A, B, C)
    torch.testing.assert_close(torch.stack(ys, 1).double(), y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state.double(), final_ref, atol=1e-5, rtol=1e-5)


def selective_inputs(b=2, length=19, d=6, n=4):
    return (
        torch.randn(b, length, d),
        torch.rand(b, length, d) * 0.5 + 0.01,
        -torch.rand(d, n) * 3 - 0.1,
        torch.randn(b, length, n),
        torch.randn(b, length, n),
    )


@pytest.mark.parametrize("chunk", [1, 3, 4, 7, 19, 32])
@pytest.mark.parametrize("with_initial", [False, True])
def test_selective_scan_chunked_equals_loop(chunk, with_initial):
    u, dt, A, B, C = selective_inputs()
    initial = torch.randn(2, 6, 4) if with_initial else None
    y, final = selective_scan_chunked(u, dt, A, B, C, chunk, initial_state=initial)
    y_ref, final_ref = selective_loop(u, dt, A, B, C, initial)
    torch.testing.assert_close(y.double(), y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(final.double(), final_ref, atol=1e-4, rtol=1e-4)


def test_selective_scan_step_equals_loop():
    u, dt, A, B, C = selective_inputs(length=5)
    state = torch.zeros(2, 6, 4)
    ys = [selective_scan_step(state, u[:, t], dt[:, t], A, B[:, t], C[:, t]) for t in range(5)]
    y_ref, final_ref = selective_loop(u, dt, A, B, C)
    torch.testing.assert_close(torch.stack(ys, 1).double(), y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state.double(), final_ref, atol=1e-5, rtol=1e-5)


def test_doubling_scan_is_the_linear_recurrence():
    log_a, b = -torch.rand(3, 13, 2), torch.randn(3, 13, 2)
    h, la = doubling_scan(log_a, b, dim=1)
    ref, acc = [], torch.zeros(3, 2)
    for t in range(13):
        acc = torch.exp(log_a[:, t]) * acc + b[:, t]
        ref.append(acc)
    torch.testing.assert_close(h, torch.stack(ref, 1))
    torch.testing.assert_close(la, log_a.cumsum(1))


def test_zero_dt_positions_leave_the_state_untouched():
    """How masks work: dt = 0 and zero input at a position is the same as skipping it."""
    x, dt, A, B, C = ssd_inputs()
    dt_masked = dt.clone()
    dt_masked[:, 5:9] = 0
    _, with_gap = ssd_chunked(x, dt_masked, A, B, C, 4)
    keep = [t for t in range(23) if not 5 <= t < 9]
    _, without = ssd_chunked(x[:, keep], dt[:, keep], A, B[:, keep], C[:, keep], 4)
    torch.testing.assert_close(with_gap, without, atol=1e-5, rtol=1e-5)


def test_causal_conv_parallel_equals_steps():
    x, weight, bias = torch.randn(2, 9, 5), torch.randn(5, 1, 4), torch.randn(5)
    y = causal_conv1d(x, weight, bias)
    window = torch.zeros(2, 5, 4)
    steps = torch.stack([causal_conv1d_step(x[:, t], window, weight, bias) for t in range(9)], 1)
    torch.testing.assert_close(y, steps)
    torch.testing.assert_close(window, conv_window(x, 4))
    ref = torch.nn.functional.conv1d(x.transpose(1, 2), weight, bias, padding=3, groups=5)[..., :9]
    torch.testing.assert_close(y, ref.transpose(1, 2))


def test_conv_window_of_a_short_input_is_zero_filled_on_the_left():
    x = torch.randn(1, 2, 3)
    window = conv_window(x, 4)
    assert torch.equal(window[..., :2], torch.zeros(1, 3, 2))
    assert torch.equal(window[..., 2:], x.transpose(1, 2))

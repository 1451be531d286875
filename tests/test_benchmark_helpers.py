"""The measuring helpers the speed benchmarks share (benchmarks/speed_common.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from speed_common import drift_warning


def test_drift_warning_is_silent_while_the_bandwidth_holds():
    assert drift_warning([26.7, 25.0, 24.1], "the read bandwidth") is None  # 10% apart


def test_drift_warning_names_the_spread_when_other_load_moved_it():
    # the contended generate_speed run of 2026-11-29: 15.5 to 22.0 GB/s
    warning = drift_warning([22.0, 18.3, 15.5, 16.9], "the read bandwidth")
    assert warning is not None
    assert "the read bandwidth moved by 30%" in warning and "15.5 to 22.0 GB/s" in warning


def test_the_interleaved_decode_splits_a_step_into_linears_mixers_and_the_rest():
    """decode_speed's mamba3 section: both presets decode in one process, and above the block
    kernels' rows, with bf16 weights, each step's Linears are timed through ops/linear.py's `F`,
    which is put back."""
    import pytest
    import torch.nn.functional as F
    from decode_speed import run_interleaved

    from ssmttm.ops import cpu_kernels
    from ssmttm.ops import linear as linear_module

    if not cpu_kernels.available():
        pytest.skip("the CPU kernels do not build here")
    batch = cpu_kernels.linear_max_rows() + 1
    result = run_interleaved(["tiny-simba", "tiny-simba3"], batch, steps=2, bf16=True, chunk=1)
    assert linear_module.F is F
    for name in ("tiny-simba", "tiny-simba3"):
        part = result[name]
        assert part["steps_per_s"] == pytest.approx(1 / part["step_s"])
        assert 0 < part["linear_s"] < part["step_s"] and part["mixer_s"] > 0
        assert part["bytes"] > part["state_bytes"] > 0  # the weights besides the state
    assert result["tiny-simba3"]["state_bytes"] < result["tiny-simba"]["state_bytes"]  # half the d_state
    assert "linear_s" not in run_interleaved(["tiny-simba3"], batch, steps=1, bf16=False, chunk=1)["tiny-simba3"]


def test_generate_speeds_quantized_targets_read_the_table_and_the_ceilings():
    """Issue 28's lines: int8 at batch 2 against MusicGen fp32's wall-clock time, and each quantized
    step's share of its byte ceiling (the one with the state's write-back)."""
    import generate_speed as gs

    plan = gs.QUICK
    rates = {gs.OURS_INT8: 60.0, gs.OURS_INT4: 80.0, gs.MUSICGEN_FP32: 10.0, gs.MUSICGEN_BEST: 20.0}
    table = {v: {p: {"steps_per_s": rate, "peak_rss_mib": 0.0} for p in plan.positions} for v, rate in rates.items()}
    ceilings = {(2, gs.OURS_INT8): (100.0, 80.0), (2, gs.OURS_INT4): (200.0, 160.0)}
    lines = gs.targets({2: table}, None, plan, ceilings)
    by_name = {line.split(":")[0]: line for line in lines}

    def line(start: str) -> str:
        return next(text for name, text in by_name.items() if name.startswith(start))

    # MusicGen: 50 frames/s at 10 steps/s; ours: 86.13 frames/s at 60 steps/s, 3 delay steps each.
    theirs = (round(plan.mid * 50) + 3) / 10
    ours = (round(plan.mid * 86.13) + 3) / 60
    ratio = theirs / ours
    assert ratio >= 3  # so the line must say met
    assert f"{ours:.1f} s against {theirs:.1f} s, {ratio:.2f}x: met (" in line(
        f"{plan.mid:g} s at batch 2, simba-300m int8"
    )
    # int4 needs 4x: at 80 steps/s it makes 4.76x.
    assert ": met (at most" in line(f"{plan.mid:g} s at batch 2, simba-300m int4")
    assert line("batch 2, simba-300m int8").endswith("60.00 steps/s, 75% of it: met")  # 60 of 80
    assert line("batch 2, simba-300m int4").endswith("80.00 steps/s, 50% of it: NOT met")  # 80 of 160
    assert "not measured" in line(f"{plan.mid:g} s at batch 16, simba-300m int8")

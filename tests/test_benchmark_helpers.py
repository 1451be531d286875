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

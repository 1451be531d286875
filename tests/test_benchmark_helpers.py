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

"""The models inside the package: each loads by name and generates, the wheel carries every file of
theirs, and together they stay within the size a pip install can bear (issue 26: 60 MB)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
import torch

from ssmttm.generation.pipeline import TextToMusic
from ssmttm.pretrained import SHIPPED_DIR, shipped_models

PACKAGE = SHIPPED_DIR.parent
PYPROJECT = PACKAGE.parents[1] / "pyproject.toml"
SIZE_BUDGET = 60e6  # bytes, all shipped models together


def shipped_files() -> list[Path]:
    return sorted(f for f in SHIPPED_DIR.rglob("*") if f.is_file() and "__pycache__" not in f.parts)


def test_the_package_ships_both_demos_within_the_size_budget():
    assert {"demo", "demo-two-stage"} <= set(shipped_models())
    total = sum(f.stat().st_size for f in shipped_files())
    assert total <= SIZE_BUDGET, f"shipped models total {total / 1e6:.1f} MB, over {SIZE_BUDGET / 1e6:.0f} MB"


def test_the_wheel_carries_every_file_of_every_shipped_model():
    """package-data lists folders by pattern: a new model or sub-folder is easy to leave out of it."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    patterns = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]["ssmttm"]
    for path in shipped_files():
        relative = path.relative_to(PACKAGE).as_posix()
        assert any(fnmatch.fnmatch(relative, p) and p.count("/") == relative.count("/") for p in patterns), relative


def test_the_shipped_two_stage_demo_generates_with_its_own_settings():
    model = TextToMusic.from_pretrained("demo-two-stage")
    assert model.two_stage and model.lm.cfg.num_codebooks == 1
    prompt = "a calm jazz piece with a saxophone lead at 90 BPM"
    wav = model.generate(prompt, duration=2.0, seed=0)
    assert wav.shape == (1, 1, 2 * model.sample_rate)
    assert torch.isfinite(wav).all() and wav.abs().max() > 1e-3
    torch.testing.assert_close(model.generate(prompt, duration=2.0, seed=0), wav, rtol=0, atol=0)

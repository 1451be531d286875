"""The Conditioning object: its rows, its unconditional twins, and the checks that catch a mismatch."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_lm

from ssmttm.conditioning import Conditioning
from ssmttm.config import SamplingConfig
from ssmttm.generation import Generator


def test_null_twins_are_the_lms_null_condition_and_hear_no_clock():
    text, clock = torch.randn(2, 3, 6), torch.tensor([[0.1, 0.0], [0.2, 0.5]], dtype=torch.float64)
    twins = Conditioning(text, None, clock).with_null_twins()
    assert (twins.rows, twins.batch, twins.guided) == (4, 2, True)
    assert torch.equal(twins.text[:2], text) and not twins.mask[2:].any() and twins.mask[:2].all()
    assert torch.equal(twins.clock[:2], clock) and all(math.isnan(v) for v in twins.clock[2:].flatten().tolist())
    assert twins.with_null_twins() is twins  # already guided: kept as it is
    alone = twins.prompt_rows()
    assert (alone.rows, alone.guided) == (2, False) and torch.equal(alone.text, text)


def test_given_unconditional_rows_are_used_as_they_are():
    """A guided Conditioning's own unconditional rows, not the null condition, drive CFG."""
    lm = tiny_lm("simba")
    prompts, other = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    sampling = SamplingConfig(temperature=1.0, cfg_scale=3.0)
    generator = Generator(lm)
    with_other = generator.generate(Conditioning(torch.cat([prompts, other]), prompts=2), 8, sampling=sampling, seed=1)
    with_null = generator.generate(Conditioning(prompts), 8, sampling=sampling, seed=1)
    null_given = Conditioning(prompts).with_null_twins()
    assert torch.equal(generator.generate(null_given, 8, sampling=sampling, seed=1), with_null)
    assert not torch.equal(with_other, with_null)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t: Conditioning(t, torch.ones(2, 5, dtype=torch.bool)), r"a text mask \(2, 5\) for text \(2, 3, 6\)"),
        (lambda t: Conditioning(t, clock=torch.zeros(3, 2)), r"a beat clock \(3, 2\) for 2 rows"),
        (lambda t: Conditioning(t, prompts=3), "3 prompts in 2 rows: each prompt has one unconditional twin or none"),
        (lambda t: Conditioning(torch.cat([t, t[:1]]), prompts=2), "2 prompts in 3 rows"),
    ],
)
def test_mismatched_rows_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make(torch.randn(2, 3, 6))

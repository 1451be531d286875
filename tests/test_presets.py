"""Parameter counts of the presets, held to the rules of a fair comparison."""

import pytest

from ssmttm.lm import count_parameters
from ssmttm.presets import load_preset


def count(name):
    return count_parameters(load_preset(name))


def test_simba_300m_is_the_release_configuration():
    cfg = load_preset("simba-300m")
    bb = cfg.backbone
    assert (bb.kind, bb.n_layers, bb.d_model, bb.mamba2.d_state, bb.mlp_hidden) == (
        "simba",
        24,
        1024,
        512,
        2048,
    )
    assert (cfg.num_codebooks, cfg.vocab_size, bb.dropout, bb.final_norm) == (4, 1025, 0.3, False)
    assert 284e6 < count("simba-300m") < 290e6  # about 287M, text encoder excluded


@pytest.mark.parametrize("name", ["transformer-300m", "mamba-300m", "mamba2-300m"])
def test_300m_presets_match_simba_within_3_percent(name):
    assert load_preset(name).backbone.d_model == 1024
    assert abs(count(name) / count("simba-300m") - 1) <= 0.03


@pytest.mark.parametrize("name", ["simba-75m", "transformer-75m"])
def test_75m_presets_are_a_quarter_within_3_percent(name):
    assert abs(count(name) / (count("simba-300m") / 4) - 1) <= 0.03


@pytest.mark.parametrize("name", ["tiny-mamba2", "tiny-mamba", "tiny-transformer"])
def test_tiny_presets_have_equal_counts(name):
    assert abs(count(name) / count("tiny-simba") - 1) <= 0.03


def test_ssm_presets_use_no_positions_and_apply_the_mask():
    for name in ["simba-300m", "mamba-300m", "mamba2-300m", "simba-75m", "tiny-simba", "tiny-mamba"]:
        cfg = load_preset(name)
        assert (cfg.positions, cfg.text_mask) == ("none", "apply")

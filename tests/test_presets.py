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


@pytest.mark.parametrize("name", ["transformer-300m", "mamba-300m", "mamba2-300m", "simba3-300m", "mamba3-300m"])
def test_300m_presets_match_simba_within_3_percent(name):
    assert load_preset(name).backbone.d_model == 1024
    assert abs(count(name) / count("simba-300m") - 1) <= 0.03


@pytest.mark.parametrize("name", ["simba-75m", "transformer-75m", "simba3-75m", "mamba3-75m"])
def test_75m_presets_are_a_quarter_within_3_percent(name):
    assert abs(count(name) / (count("simba-300m") / 4) - 1) <= 0.03


@pytest.mark.parametrize("name", ["tiny-mamba2", "tiny-mamba", "tiny-transformer", "tiny-simba3", "tiny-mamba3"])
def test_tiny_presets_have_equal_counts(name):
    assert abs(count(name) / count("tiny-simba") - 1) <= 0.03


# Each Mamba-3 preset and the preset it is compared with: its SiMBA or Mamba-2 counterpart, or
# simba-75m for mamba3-75m, as there is no mamba2-75m.
MAMBA3_COUNTERPARTS = {
    "simba3-300m": "simba-300m",
    "simba3-75m": "simba-75m",
    "tiny-simba3": "tiny-simba",
    "demo-simba3": "demo-simba",
    "mamba3-300m": "mamba2-300m",
    "mamba3-75m": "simba-75m",
    "tiny-mamba3": "tiny-mamba2",
}


@pytest.mark.parametrize(("name", "counterpart"), MAMBA3_COUNTERPARTS.items())
def test_mamba3_presets_match_their_counterparts_at_half_the_state(name, counterpart):
    """Within 3% of the counterpart's parameters, at the same width and half its d_state (the
    Mamba-3 paper's suggestion); the SiMBA layout keeps its MLP width and its lack of a final norm."""
    cfg, other = load_preset(name).backbone, load_preset(counterpart).backbone
    assert abs(count(name) / count(counterpart) - 1) <= 0.03
    assert (cfg.d_model, cfg.mamba3.headdim, cfg.mamba3.expand) == (other.d_model, other.mamba2.headdim, 2)
    assert cfg.mamba3.d_state == other.mamba2.d_state // 2 and not cfg.mamba3.is_mimo
    assert cfg.kind == ("simba3" if "simba3" in name else "mamba3")
    if cfg.kind == "simba3":
        assert (cfg.mlp_hidden, cfg.final_norm, cfg.dropout) == (other.mlp_hidden, other.final_norm, other.dropout)


def test_ssm_presets_use_no_positions_and_apply_the_mask():
    for name in [
        "simba-300m",
        "mamba-300m",
        "mamba2-300m",
        "simba-75m",
        "tiny-simba",
        "tiny-mamba",
        *MAMBA3_COUNTERPARTS,
    ]:
        cfg = load_preset(name)
        assert (cfg.positions, cfg.text_mask) == ("none", "apply")

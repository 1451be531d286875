"""Stage 2's denoiser, objective and configs: shapes, adaLN-Zero start, masks, FLOPs, round trips."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ssmttm.config import ConfigError, from_dict, load_yaml, save_yaml, to_dict
from ssmttm.diffusion import (
    Denoiser,
    DenoiserConfig,
    Stage2Config,
    Stage2Model,
    denoiser_flops,
    drop_captions,
    flow_loss,
    sample_timesteps,
)

DIM, CARD, TEXT_DIM = 4, 5, 6


def tiny(**overrides) -> DenoiserConfig:
    return DenoiserConfig(latent_dim=DIM, cardinality=CARD, text_dim=TEXT_DIM, d_model=32, n_layers=2, **overrides)


def randomised(cfg: DenoiserConfig, seed: int = 0) -> Denoiser:
    """A denoiser whose zero-initialised layers are random too, so that every input reaches the output."""
    torch.manual_seed(seed)
    model = Denoiser(cfg).eval()
    for name, param in model.named_parameters():
        if "modulation" in name or "out_proj" in name:
            torch.nn.init.normal_(param, std=0.2)
    return model


def inputs(batch: int = 2, frames: int = 9, text_len: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, DIM, frames, generator=g)
    t = torch.rand(batch, generator=g)
    coarse = torch.randint(0, CARD, (batch, frames), generator=g)
    text = torch.randn(batch, text_len, TEXT_DIM, generator=g)
    mask = torch.arange(text_len)[None].expand(batch, -1) >= 1  # left padding
    return x, t, coarse, text, mask


def test_shapes_and_zero_output_at_start():
    torch.manual_seed(0)
    model = Denoiser(tiny())
    v = model(*inputs())
    assert v.shape == (2, DIM, 9)
    assert torch.count_nonzero(v) == 0  # adaLN-Zero and a zero output layer: the model starts at v = 0


def test_same_seed_same_model_and_output():
    a, b = randomised(tiny(), seed=3), randomised(tiny(), seed=3)
    torch.testing.assert_close(a(*inputs()), b(*inputs()), rtol=0, atol=0)


def test_padding_frames_beyond_t_do_not_matter():
    model = randomised(tiny())
    x, t, coarse, text, mask = inputs(frames=9)
    reference = model(x, t, coarse, text, mask)
    padded_x = torch.cat([x, 100 * torch.randn(2, DIM, 5)], dim=-1)  # (B, D, 14)
    padded_coarse = torch.cat([coarse, torch.randint(0, CARD, (2, 5))], dim=-1)
    frame_mask = torch.arange(14)[None].expand(2, -1) < 9
    padded = model(padded_x, t, padded_coarse, text, mask, frame_mask)
    torch.testing.assert_close(padded[..., :9], reference, rtol=1e-5, atol=1e-5)


def test_masked_text_positions_do_not_matter_and_the_null_row_is_finite():
    model = randomised(tiny())
    x, t, coarse, text, mask = inputs()
    other = text.clone()
    other[:, 0] = 50.0  # the padded position
    torch.testing.assert_close(model(x, t, coarse, other, mask), model(x, t, coarse, text, mask))
    null = torch.zeros_like(mask)
    v = model(x, t, coarse, text, null)
    assert torch.isfinite(v).all()
    torch.testing.assert_close(v, model(x, t, coarse, torch.randn_like(text), null))  # null: text unseen
    assert not torch.allclose(v, model(x, t, coarse, text, mask))  # and the text matters otherwise


def test_any_window_length_works():
    model = randomised(tiny())
    for frames in (1, 7, 64):
        x, t, coarse, text, mask = inputs(frames=frames)
        assert model(x, t, coarse, text, mask).shape == (2, DIM, frames)


@pytest.mark.parametrize(("frames", "text_len"), [(50, 8), (130, 3)])
def test_flops_match_the_counter(frames, text_len):
    model = randomised(tiny())
    # The counter has no formula for the CPU flash kernel; on the math backend attention is two matmuls.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*inputs(batch=1, frames=frames, text_len=text_len))
    assert denoiser_flops(tiny(), frames, text_len) == pytest.approx(counter.get_total_flops(), rel=0.02)


def test_config_round_trips_through_dict_and_yaml(tmp_path):
    cfg = Stage2Config(
        denoiser=tiny(caption_dropout=0.2),
        timestep_sampling="uniform",
        steps=10,
        cfg_scale=3.5,
    )
    assert from_dict(Stage2Config, to_dict(cfg)) == cfg
    save_yaml(cfg, tmp_path / "stage2.yaml")
    assert load_yaml(Stage2Config, tmp_path / "stage2.yaml") == cfg
    assert load_yaml(Stage2Config, tmp_path / "stage2.yaml", ["window_frames=100"]).window_frames == 100


@pytest.mark.parametrize(
    "fields",
    [
        {"steps": 0},
        {"cfg_scale": -1.0},
        {"cfg_scale": float("nan")},
        {"cfg_scale": float("inf")},
        {"overlap_frames": 430},
    ],
)
def test_bad_configs_are_one_line_errors(fields):
    with pytest.raises(ConfigError) as err:
        Stage2Config(denoiser=tiny(), **fields)
    assert "\n" not in str(err.value)


def test_bad_denoiser_config():
    with pytest.raises(ConfigError, match="heads"):
        tiny(n_heads=3)


def test_normalisation_round_trips_and_its_statistics_ship_in_the_weights():
    model = Stage2Model(Stage2Config(denoiser=tiny()))
    x = torch.randn(2, DIM, 7)
    torch.testing.assert_close(model.normalise(x), x)  # identity until measured
    model.set_statistics(torch.tensor([1.0, 2, 3, 4]), torch.tensor([0.5, 1, 2, 4]))
    z = model.normalise(x)
    torch.testing.assert_close(z[:, 3], (x[:, 3] - 4) / 4)
    torch.testing.assert_close(model.denormalise(z), x)
    fresh = Stage2Model(Stage2Config(denoiser=tiny()))
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh.normalise(x), z)


@pytest.mark.parametrize(
    ("mean", "std"),
    [([1.0, 2.0], [1.0, 1.0]), ([0.0] * DIM, [1.0, 1.0, 0.0, 1.0]), ([0.0] * DIM, [1.0, float("nan"), 1.0, 1.0])],
)
def test_bad_statistics_are_one_line_errors(mean, std):
    model = Stage2Model(Stage2Config(denoiser=tiny()))
    with pytest.raises(ConfigError) as err:
        model.set_statistics(torch.tensor(mean), torch.tensor(std))
    assert "\n" not in str(err.value)


def test_timestep_sampling_and_caption_dropout():
    torch.manual_seed(0)
    logit_normal = sample_timesteps(20000, Stage2Config())
    uniform = sample_timesteps(20000, Stage2Config(timestep_sampling="uniform"))
    assert logit_normal.min() > 0 and logit_normal.max() < 1
    assert abs(torch.logit(logit_normal).std().item() - 1) < 0.03
    assert abs(uniform.mean().item() - 0.5) < 0.01
    mask = torch.ones(1000, 3, dtype=torch.bool)
    assert not drop_captions(mask, 1.0).any() and drop_captions(mask, 0.0).all()
    dropped = ~drop_captions(mask, 0.25).any(dim=1)
    assert 0.2 < dropped.float().mean().item() < 0.3


def test_flow_loss_is_seeded_and_ignores_padded_frames():
    cfg = Stage2Config(denoiser=tiny())
    model = randomised(tiny()).train()
    x, _, coarse, text, mask = inputs(frames=9)
    frame_mask = torch.arange(9)[None].expand(2, -1) < 6
    junk = x.clone()
    junk[..., 6:] = 1e3
    losses = []
    for latents in (x, x, junk):
        torch.manual_seed(7)
        losses.append(flow_loss(model, latents, coarse, text, mask, cfg, frame_mask).loss)
    assert losses[0] == losses[1] == losses[2]
    assert torch.isfinite(losses[0])


def test_the_package_imports_no_model_room_nor_diffusers_up_front():
    code = (
        "import sys, ssmttm.diffusion; "
        "rooms = ('ssmttm.lm', 'ssmttm.generation', 'ssmttm.training', 'ssmttm.codecs', 'ssmttm.cli', 'diffusers'); "
        "print(sorted(m for m in sys.modules if m.startswith(rooms)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_training_contexts_are_known_prefixes_of_the_clean_latents():
    from ssmttm.diffusion.flow import draw_context

    torch.manual_seed(0)
    x0 = torch.randn(2000, DIM, 12)
    context, mask = draw_context(x0, 0.5, max_frames=4)
    lengths = mask.sum(dim=1)
    assert 0.45 < (lengths > 0).float().mean() < 0.55 and lengths.max() == 4
    assert torch.equal(mask, torch.arange(12)[None] < lengths[:, None])  # prefixes
    assert torch.equal(context, x0 * mask[:, None])
    assert not draw_context(x0, 0.0, 4)[1].any()
    assert draw_context(x0[:, :, :3], 1.0, max_frames=10)[1].sum(dim=1).max() == 2  # never the whole window

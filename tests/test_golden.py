"""Same numbers as the reference implementations: mamba_ssm's mixers and the authors' model.

The fixtures in tests/golden/ were produced by mamba_ssm's own modules and by the release's
`Text_Mmamba`, with random (not initial) parameter values; see tests/golden/README.md.
"""

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from ssmttm.backbones.base import Context
from ssmttm.backbones.mamba import Mamba
from ssmttm.backbones.mamba2 import Mamba2
from ssmttm.config import BackboneConfig, LMConfig, Mamba2Config, MambaConfig
from ssmttm.lm import MusicLM


def load_golden(golden_dir, name):
    tensors = load_file(golden_dir / f"{name}_golden.safetensors")
    meta = json.loads((golden_dir / f"{name}_golden.json").read_text())
    weights = {k.removeprefix("weights."): v for k, v in tensors.items() if k.startswith("weights.")}
    return tensors, meta["config"], weights


def build_mixer(name, config, chunk_size):
    config = dict(config)
    d_model = config.pop("d_model")
    if name == "mamba2":
        return Mamba2(d_model, Mamba2Config(**config, chunk_size=chunk_size))
    return Mamba(d_model, MambaConfig(**config, chunk_size=chunk_size))


@pytest.mark.parametrize("name", ["mamba2", "mamba"])
@pytest.mark.parametrize("chunk_size", [5, 8, 64])
def test_mixer_forward_matches_mamba_ssm(golden_dir, name, chunk_size):
    golden, config, weights = load_golden(golden_dir, name)
    mixer = build_mixer(name, config, chunk_size).eval()
    mixer.load_state_dict(weights, strict=True)  # the state dict loads unchanged
    with torch.no_grad():
        y, state = mixer.prefill(golden["input"], Context())
    torch.testing.assert_close(y, golden["output"], atol=1e-4, rtol=0)
    torch.testing.assert_close(state.conv, golden["final_conv_state"], atol=1e-4, rtol=0)
    torch.testing.assert_close(state.ssm, golden["final_ssm_state"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["mamba2", "mamba"])
@pytest.mark.parametrize("split", [1, 9])
def test_mixer_steps_match_mamba_ssm(golden_dir, name, split):
    golden, config, weights = load_golden(golden_dir, name)
    mixer = build_mixer(name, config, 4).eval()
    mixer.load_state_dict(weights, strict=True)
    x = golden["input"]
    with torch.no_grad():
        y0, state = mixer.prefill(x[:, :split], Context())
        ys = [y0]
        for t in range(split, x.shape[1]):
            y, state = mixer.step(x[:, t], state)
            ys.append(y[:, None])
    torch.testing.assert_close(torch.cat(ys, 1), golden["output"], atol=1e-4, rtol=0)
    torch.testing.assert_close(state.ssm, golden["final_ssm_state"], atol=1e-4, rtol=0)
    torch.testing.assert_close(state.conv, golden["final_conv_state"], atol=1e-4, rtol=0)


# The release's names onto ours. The release-import issue owns the real importer; this table only
# proves that our SiMBA has the release's exact structure.
RELEASE_NAMES = [
    (r"^condition_linear\.", "text_proj."),
    (r"^condition_norm\.", "text_norm."),
    (r"^embedding\.", "embeddings."),
    (r"^lm_head\.", "heads."),
    (r"^backbone\.(\d+)\.mamba\.norm\.", r"backbone.layers.\1.mixer_norm."),
    (r"^backbone\.(\d+)\.mamba\.mamba\.", r"backbone.layers.\1.mixer."),
    (r"^backbone\.(\d+)\.ff\.norm\.", r"backbone.layers.\1.mlp_norm."),
    (r"^backbone\.(\d+)\.ff\.feed_forward\.0\.", r"backbone.layers.\1.mlp.fc1."),
    (r"^backbone\.(\d+)\.ff\.feed_forward\.3\.", r"backbone.layers.\1.mlp.fc2."),
]


def rename(key):
    for pattern, replacement in RELEASE_NAMES:
        new, count = re.subn(pattern, replacement, key)
        if count:
            return new
    raise KeyError(key)


def release_lm(golden_dir):
    golden, config, weights = load_golden(golden_dir, "release_simba_k4")
    cfg = LMConfig(
        num_codebooks=config["codec_layer"],
        cardinality=config["vocab_size"] - 1,
        text_dim=golden["text_embeddings"].shape[-1],
        positions="sinusoidal",
        text_mask="ignore",
        backbone=BackboneConfig(
            kind="simba",
            d_model=config["d_model"],
            n_layers=config["layers"],
            mlp_hidden=2 * config["d_model"],
            dropout=0.3,  # the release's; inactive in eval mode
            final_norm=False,
            mamba2=Mamba2Config(
                d_state=config["d_state"], d_conv=config["d_conv"], expand=config["expand"], chunk_size=8
            ),
        ),
    )
    lm = MusicLM(cfg).eval()
    missing, unexpected = lm.load_state_dict({rename(k): v for k, v in weights.items()}, strict=False)
    assert missing == ["null_embedding"] and unexpected == []  # every release tensor has a home
    return lm, golden


def test_simba_has_the_release_layout_forward(golden_dir):
    lm, golden = release_lm(golden_dir)
    with torch.no_grad():
        logits = lm(golden["codes"], golden["text_embeddings"])
    torch.testing.assert_close(logits, golden["logits"], atol=1e-4, rtol=0)


def test_simba_has_the_release_layout_step_by_step(golden_dir):
    lm, golden = release_lm(golden_dir)
    codes = golden["codes"]
    with torch.no_grad():
        logits, state = lm.prefill(golden["text_embeddings"])
        columns = [logits]
        for t in range(codes.shape[-1]):
            logits, state = lm.step(codes[:, :, t], state)
            columns.append(logits)
    torch.testing.assert_close(torch.stack(columns, 2), golden["logits"], atol=1e-4, rtol=0)

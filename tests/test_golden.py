"""Same numbers as the reference implementations: mamba_ssm's mixers and the authors' model.

The fixtures in tests/golden/ were produced by mamba_ssm's own modules and by the release's
`Text_Mmamba`, with random (not initial) parameter values; see tests/golden/README.md.
"""

import json

import pytest
import torch
from conftest import save_release_checkpoint
from safetensors.torch import load_file

from ssmttm.backbones.base import Context
from ssmttm.backbones.mamba import Mamba, MambaConfig
from ssmttm.backbones.mamba2 import Mamba2, Mamba2Config
from ssmttm.conditioning import Conditioning
from ssmttm.pretrained import load_pretrained
from ssmttm.release import import_release


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


def release_lm(golden_dir, tmp_path):
    """The golden model through the importer, exactly as a real checkpoint goes: a Lightning .ckpt,
    `import_release`, then `load_pretrained` of the folder it wrote."""
    golden, config, weights = load_golden(golden_dir, "release_simba_k4")
    ckpt = save_release_checkpoint(tmp_path / "golden.ckpt", weights, config)
    import_release(ckpt, tmp_path / "model")
    lm, _ = load_pretrained(tmp_path / "model")
    return lm, golden


def test_imported_release_model_forward(golden_dir, tmp_path):
    lm, golden = release_lm(golden_dir, tmp_path)
    with torch.no_grad():
        logits = lm(golden["codes"], Conditioning(golden["text_embeddings"]))
    torch.testing.assert_close(logits, golden["logits"], atol=1e-4, rtol=0)


def test_imported_release_model_step_by_step(golden_dir, tmp_path):
    lm, golden = release_lm(golden_dir, tmp_path)
    codes = golden["codes"]
    with torch.no_grad():
        logits, state = lm.prefill(Conditioning(golden["text_embeddings"]))
        columns = [logits]
        for t in range(codes.shape[-1]):
            logits, state = lm.step(codes[:, :, t], state)
            columns.append(logits)
    torch.testing.assert_close(torch.stack(columns, 2), golden["logits"], atol=1e-4, rtol=0)

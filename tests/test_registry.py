"""The mixer registry: what each kind declares is true of the modules it builds, and a kind that is
only registered (no other edit) works through the LM, generation, FLOP accounting and the CLI."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import KINDS, tiny_config, tiny_lm

from ssmttm.backbones import MIXERS, mixer_spec
from ssmttm.backbones.base import Mixer
from ssmttm.cli import main
from ssmttm.conditioning import Conditioning
from ssmttm.config import ConfigError, from_dict, to_dict
from ssmttm.generation import Generator
from ssmttm.generation.cuda_graph import graphs_apply
from ssmttm.lm import LMConfig, MusicLM
from ssmttm.training.flops import forward_flops


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_state_bytes_are_the_bytes_a_prefilled_state_holds(kind, state_dtype):
    spec = mixer_spec(kind)
    if state_dtype not in spec.state_dtypes:
        pytest.skip(f"{kind} keeps no recurrent state in {state_dtype}")
    lm, positions = tiny_lm(kind), 7
    with torch.no_grad():
        _, state = lm.prefill(Conditioning(torch.randn(1, positions, lm.cfg.text_dim)))
    mixer_state = state.backbone.layers[0].mixer.with_recurrent_dtype(state_dtype)
    held = sum(t.nbytes for t in mixer_state.tensors())
    assert held == spec.state_bytes(lm.cfg.backbone, positions, state_dtype)


@pytest.mark.parametrize("kind", KINDS)
def test_each_spec_builds_its_mixer_and_norm(kind):
    spec, lm = mixer_spec(kind), tiny_lm(kind)
    block = lm.backbone.layers[0]
    assert isinstance(block.mixer, Mixer)
    assert type(block.mixer_norm) is spec.norm
    assert (block._fused_step is not None) == (spec.fused_cpu_step is not None)
    assert graphs_apply(lm, torch.device("cuda")) == spec.cuda_graph


def test_an_unknown_kind_names_the_registered_ones():
    data = to_dict(tiny_config())
    data["backbone"]["kind"] = "mamba7"
    with pytest.raises(ConfigError, match="unknown backbone kind 'mamba7'; choose one of: " + ", ".join(MIXERS)):
        from_dict(LMConfig, data)


def test_a_kind_that_is_only_registered_works_everywhere(monkeypatch, capsys):
    """The proof that nothing outside the registry switches on kind names: a copy of the Mamba-2
    spec under a new name trains, decodes with a bf16 state, counts its FLOPs and is described."""
    monkeypatch.setitem(MIXERS, "mamba2-copy", dataclasses.replace(MIXERS["mamba2"], description="a copied Mamba-2"))
    original, copy = tiny_config("mamba2"), tiny_config("mamba2-copy")
    torch.manual_seed(0)
    reference = MusicLM(original).eval()
    torch.manual_seed(0)
    lm = MusicLM(copy).eval()
    codes, text = torch.randint(0, 11, (2, 3, 9)), torch.randn(2, 4, 6)
    torch.testing.assert_close(
        lm.compute_loss(codes, Conditioning(text)).loss, reference.compute_loss(codes, Conditioning(text)).loss
    )
    assert forward_flops(copy, 9, 4) == forward_flops(original, 9, 4)
    decoded = Generator(lm, state_dtype=torch.bfloat16).generate(Conditioning(text), 6, seed=0)
    assert decoded.shape == (2, 3, 6)
    assert main(["summary", "tiny-mamba2", "backbone.kind=mamba2-copy"]) == 0
    out = capsys.readouterr().out
    assert "mamba2-copy: 9 x [a copied Mamba-2]" in out and "MiB per row, the same at every length" in out

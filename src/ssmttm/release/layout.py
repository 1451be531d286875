"""The authors' checkpoint layout, mapped onto our SiMBA (paper-notes, "Release checkpoint layout").

    release name (after `music_model.`)       ours
    condition_linear.{weight,bias}            text_proj.*        (d, 768): T5 -> d_model
    condition_norm.{weight,bias}              text_norm.*        LayerNorm, eps 1e-5
    embedding.{k}.weight                      embeddings.{k}.*   (vocab, d), one per codebook
    backbone.{i}.mamba.norm.weight            backbone.layers.{i}.mixer_norm.*
    backbone.{i}.mamba.mamba.*                backbone.layers.{i}.mixer.*   (mamba_ssm's Mamba2 names)
    backbone.{i}.ff.norm.weight               backbone.layers.{i}.mlp_norm.*
    backbone.{i}.ff.feed_forward.{0,3}.*      backbone.layers.{i}.mlp.{fc1,fc2}.*
    lm_head.{k}.weight                        heads.{k}.*        (vocab, d), no bias

Every size is read off the tensors' shapes, so a checkpoint imports without its config.json; a
config, when there is one, is checked against them. The release has no null condition: our
`null_embedding` is set to zeros and is never used in the release's text mode, where every caption,
the empty one included, has at least T5's </s>.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ssmttm.backbones import BackboneConfig
from ssmttm.backbones.mamba2 import Mamba2Config
from ssmttm.lm import LMConfig, MusicLM
from ssmttm.weights import few, state_dict_problems

# (release prefix, our prefix); {i} stands for a block or codebook index.
PREFIXES = [
    ("condition_linear.", "text_proj."),
    ("condition_norm.", "text_norm."),
    ("embedding.{i}.", "embeddings.{i}."),
    ("lm_head.{i}.", "heads.{i}."),
    ("backbone.{i}.mamba.norm.", "backbone.layers.{i}.mixer_norm."),
    ("backbone.{i}.mamba.mamba.", "backbone.layers.{i}.mixer."),
    ("backbone.{i}.ff.norm.", "backbone.layers.{i}.mlp_norm."),
    ("backbone.{i}.ff.feed_forward.0.", "backbone.layers.{i}.mlp.fc1."),
    ("backbone.{i}.ff.feed_forward.3.", "backbone.layers.{i}.mlp.fc2."),
]
RELEASE_DROPOUT = 0.3  # the paper's drop_p, used when no config says otherwise (inactive when generating)
# What the release's config.json says about the model, against what we read off the tensors.
CHECKED_KEYS = {
    "layers": "n_layers",
    "vocab_size": "vocab_size",
    "codec_layer": "num_codebooks",
    "d_model": "d_model",
    "d_state": "d_state",
    "d_conv": "d_conv",
    "expand": "expand",
}


class ReleaseError(ValueError):
    """A release checkpoint that cannot be imported, with a one-line reason naming the key."""


@dataclass
class ReleaseShape:
    """A release model's sizes, as its tensors give them."""

    num_codebooks: int
    vocab_size: int  # codebook size + 1 (the special id)
    d_model: int
    n_layers: int
    text_dim: int  # 768: FLAN-T5-base
    mlp_hidden: int  # 2 d_model in the release
    d_state: int
    d_conv: int
    expand: int
    headdim: int


def _translate(key: str, source: int) -> str | None:
    """A release name -> ours (source 0), or ours -> the release's (source 1); None if it has no match."""
    for pair in PREFIXES:
        pattern = "^" + re.escape(pair[source]).replace(r"\{i\}", r"(\d+)")
        found = re.match(pattern, key)
        if found:
            target = pair[1 - source].replace("{i}", found.group(1)) if found.groups() else pair[1 - source]
            return target + key[found.end() :]
    return None


def to_ours(key: str) -> str | None:
    return _translate(key, 0)


def to_release(key: str) -> str | None:
    return _translate(key, 1)


def infer_shape(state: dict[str, Tensor], prefix: str = "") -> ReleaseShape:
    """Sizes from the tensors of a release state dict (release names, `prefix` only for messages)."""

    def get(key: str) -> Tensor:
        if key not in state:
            raise ReleaseError(f"the checkpoint has no {prefix}{key}: not a release prefix-SiMBA model")
        return state[key]

    codebooks = _indices(state, "embedding.")
    layers = _indices(state, "backbone.")
    if not codebooks or not layers:
        raise ReleaseError(f"the checkpoint has no {prefix}embedding.0.* or {prefix}backbone.0.*: not a release model")
    vocab, d_model = get("embedding.0.weight").shape  # (V, d)
    mixer = "backbone.0.mamba.mamba."
    d_inner = get(mixer + "out_proj.weight").shape[1]  # (d, d_inner)
    nheads = get(mixer + "A_log").shape[0]  # (nheads,)
    conv_channels, _, d_conv = get(mixer + "conv1d.weight").shape  # (d_inner + 2 d_state, 1, d_conv): ngroups 1
    if d_inner % d_model or d_inner % nheads or (conv_channels - d_inner) % 2:
        raise ReleaseError(
            f"{prefix}{mixer}out_proj.weight, A_log and conv1d.weight do not fit together as a Mamba-2 mixer "
            f"of width {d_model}"
        )
    return ReleaseShape(
        num_codebooks=max(codebooks) + 1,  # a gap in the indices shows up as missing keys
        vocab_size=vocab,
        d_model=d_model,
        n_layers=max(layers) + 1,
        text_dim=get("condition_linear.weight").shape[1],  # (d, 768)
        mlp_hidden=get("backbone.0.ff.feed_forward.0.weight").shape[0],  # (2d, d)
        d_state=(conv_channels - d_inner) // 2,
        d_conv=d_conv,
        expand=d_inner // d_model,
        headdim=d_inner // nheads,
    )


def _indices(state: dict[str, Tensor], head: str) -> set[int]:
    return {int(m.group(1)) for key in state if (m := re.match(re.escape(head) + r"(\d+)\.", key))}


def check_config(shape: ReleaseShape, model: dict[str, Any], where: str) -> None:
    """The `model` section of a release config (config.json or the checkpoint's hyper-parameters)
    against the sizes the tensors give; one error listing every disagreement."""
    if not isinstance(model, dict):
        raise ReleaseError(f"{where}: its `model` section is not a JSON object")
    if model.get("is_incontext", True) is not True:
        raise ReleaseError(f"{where}: is_incontext is false, a cross-attention model; only prefix models import")
    wrong = [
        f"{key} {model[key]!r} (the weights have {getattr(shape, ours)})"
        for key, ours in CHECKED_KEYS.items()
        if key in model and model[key] != getattr(shape, ours)
    ]
    if wrong:
        raise ReleaseError(f"{where} does not match the checkpoint's tensors: {', '.join(wrong)}")


def lm_config(shape: ReleaseShape, dropout: float = RELEASE_DROPOUT) -> LMConfig:
    """Our config of the release's model: prefix SiMBA, sinusoidal positions, text mask ignored."""
    return LMConfig(
        num_codebooks=shape.num_codebooks,
        cardinality=shape.vocab_size - 1,
        text_dim=shape.text_dim,
        pattern="delay",
        conditioning="prefix",
        positions="sinusoidal",
        text_mask="ignore",
        backbone=BackboneConfig(
            kind="simba",
            d_model=shape.d_model,
            n_layers=shape.n_layers,
            mlp_hidden=shape.mlp_hidden,
            dropout=dropout,
            final_norm=False,
            norm_eps=1e-5,
            mamba2=Mamba2Config(
                d_state=shape.d_state, d_conv=shape.d_conv, expand=shape.expand, headdim=shape.headdim, ngroups=1
            ),
        ),
    )


def build_lm(state: dict[str, Tensor], model: dict[str, Any] | None = None, prefix: str = "") -> MusicLM:
    """Our MusicLM (eval mode, fp32) holding a release state dict's weights (release names, no prefix).

    `model` is a release config's `model` section to check against; `prefix` is how the file spells
    the names (`music_model.`), so that errors name keys as the user's file does.
    """
    shape = infer_shape(state, prefix)
    dropout = RELEASE_DROPOUT
    if model is not None:
        dropout = float(model.get("drop_p", RELEASE_DROPOUT))
    ours = _rename(state, prefix)
    with torch.device("meta"):
        lm = MusicLM(lm_config(shape, dropout))
    expected = lm.state_dict()
    ours["null_embedding"] = torch.zeros(shape.d_model)
    _check(expected, ours, prefix)
    lm.load_state_dict({k: v.float() for k, v in ours.items()}, strict=True, assign=True)
    return lm.eval()


def _rename(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    renamed, unknown = {}, []
    for key, tensor in state.items():
        ours = to_ours(key)
        if ours is None:
            unknown.append(prefix + key)
        else:
            renamed[ours] = tensor
    if unknown:
        raise ReleaseError(f"the checkpoint has tensors a release prefix-SiMBA has not: {few(unknown)}")
    return renamed


def _check(expected: dict[str, Tensor], found: dict[str, Tensor], prefix: str) -> None:
    """One error naming (in the release's spelling) every unexpected, missing or mis-shaped tensor."""
    problems = state_dict_problems(expected, found, lambda key: prefix + str(to_release(key)))
    if problems:
        raise ReleaseError(f"the checkpoint does not hold a complete release model: {'; '.join(problems)}")

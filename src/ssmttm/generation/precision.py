"""Where a model decodes and in which dtypes: the choices any front end (the CLI, a web app, a
notebook) names with a word, resolved the same way for all of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ssmttm.backbones import mixer_spec
from ssmttm.ops.quantize import DEFAULT_GROUP, FORMATS, GROUP_SIZES


@dataclass(frozen=True)
class Precision:
    """The dtypes a model decodes in: the Linear weights, and the recurrent state between steps.
    Activations are fp32 either way (`Generator` says how each is used).

    `quantized` "int8" or "int4" stores the Linear weights packed (ops/quantize.py, int4 in groups
    of `group` inputs), quantized at load time from `weight_dtype`'s; None keeps them in it."""

    weight_dtype: torch.dtype = torch.float32
    state_dtype: torch.dtype = torch.float32
    quantized: str | None = None
    group: int = DEFAULT_GROUP

    NAMES: ClassVar[tuple[str, ...]] = ("fp32", "bf16", *FORMATS)

    def __post_init__(self) -> None:
        if self.quantized is not None and self.quantized not in FORMATS:
            raise ValueError(f"quantized {self.quantized!r}: choose one of {', '.join(FORMATS)}, or None")
        if self.group not in GROUP_SIZES:
            raise ValueError(f"int4 group size {self.group}: choose one of {', '.join(map(str, GROUP_SIZES))}")

    @property
    def name(self) -> str:
        """ "fp32", "bf16" (bf16 weights), "bf16-state" (fp32 weights, a bf16 state), "int8", or
        "int4" ("int4-g<size>" for a group size other than the default)."""
        if self.quantized == "int4" and self.group != DEFAULT_GROUP:
            return f"int4-g{self.group}"
        if self.quantized is not None:
            return self.quantized
        if self.weight_dtype == torch.bfloat16:
            return "bf16"
        return "fp32" if self.state_dtype == torch.float32 else "bf16-state"

    @classmethod
    def named(cls, name: str, kind: str) -> Precision:
        """ "fp32", or for a backbone of `kind` "bf16" (the weights in bf16), "int8" or "int4" (the
        weights packed): each with the state in bf16 where the kind keeps a recurrent one in bf16
        (a Transformer's KV cache is not one: it stays fp32)."""
        if name not in cls.NAMES:
            raise ValueError(f"precision {name!r}: choose one of {', '.join(cls.NAMES)}")
        if name == "fp32":
            return cls()
        spec = mixer_spec(kind)
        state = torch.bfloat16 if torch.bfloat16 in spec.state_dtypes else torch.float32
        if name in FORMATS:
            return cls(torch.float32, state, quantized=name)
        return cls(torch.bfloat16, state)

    def check(self, kind: str) -> None:
        """A ValueError unless a backbone of `kind` decodes with these dtypes (its registry entry)."""
        spec = mixer_spec(kind)
        if self.weight_dtype not in spec.weight_dtypes:
            choices = " or ".join(dtype_name(d) for d in spec.weight_dtypes)
            raise ValueError(f"a {kind} decodes with {choices} weights, not {dtype_name(self.weight_dtype)}")
        if self.state_dtype not in spec.state_dtypes:
            choices = " or ".join(dtype_name(d) for d in spec.state_dtypes)
            raise ValueError(f"a {kind} keeps its decoding state in {choices}, not {dtype_name(self.state_dtype)}")


def resolve_device(name: str) -> str:
    """A device name as torch spells it: "cpu", "cuda", "cuda:N", or "auto" (cuda where torch sees
    one). A ValueError (one line) when it names no device this machine has."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name}: not a device name (cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name}: this machine's torch {torch.__version__} sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name}: there are {torch.cuda.device_count()} CUDA devices")
    elif device.type != "cpu":
        raise ValueError(f"device {name}: only cpu and cuda are supported")
    return str(device)


def dtype_name(dtype: torch.dtype) -> str:
    """ "bfloat16" for torch.bfloat16: how records spell a dtype."""
    return str(dtype).removeprefix("torch.")

"""Weights files, read and written one way for every exported model (the LM's, stage 2's).

safetensors only: tensors in, tensors out, no pickle. A tensor is cast as soon as it is read, so a
reduced precision never holds the whole model in fp32 first; a state dict that does not fit its
model is one line naming the first few keys that differ.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors
from torch import Tensor

from ssmttm.files import atomic_write
from ssmttm.hub import first_line

STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def write_weights(path: str | Path, state: dict[str, Tensor], storage: str | None = None) -> None:
    """The state dict as a safetensors file, written atomically; with `storage`, its matrices in
    that dtype (`stored_as`), else every tensor as it is."""
    tensors = plain_tensors(state)
    data = save_safetensors(tensors if storage is None else stored_as(tensors, storage), metadata={"format": "pt"})
    atomic_write(Path(path), lambda f: f.write(data))


def read_weights(
    path: Path, cast: Callable[[str, Tensor], Tensor] | None = None, error: type[Exception] = ValueError
) -> dict[str, Tensor]:
    """The file's tensors, each passed through `cast` as soon as it is read; `error` (one line) when
    the file cannot be read."""
    try:
        with safe_open(path, framework="pt") as f:
            return {key: f.get_tensor(key) if cast is None else cast(key, f.get_tensor(key)) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        raise error(f"{path} is not a readable safetensors file ({first_line(err)})") from None


def stored_as(state: dict[str, Tensor], storage: str) -> dict[str, Tensor]:
    """The floating-point matrices (2-D and up: linear weights, embeddings) cast to `storage`; every
    vector and scalar stays as it is. The matrices are nearly all of the bytes, while the vectors hold
    what a rounding would move most: norms, biases, an SSM's A and D, stage 2's latent statistics.
    Loaders cast every tensor to the dtype they compute in, so a bf16 file runs as fp32 does."""
    if storage not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype {storage!r} is not one of {', '.join(STORAGE_DTYPES)}")
    dtype = STORAGE_DTYPES[storage]
    return {k: t.to(dtype) if t.is_floating_point() and t.ndim >= 2 else t for k, t in state.items()}


def plain_tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached, contiguous CPU tensors, each with its own storage (safetensors refuses shared ones)."""
    seen: set[int] = set()
    tensors = {}
    for key, value in state.items():
        tensor = value.detach().cpu()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    return tensors


def state_dict_problems(
    expected: dict[str, Tensor], found: dict[str, Tensor], name: Callable[[str], str] = str
) -> list[str]:
    """What keeps `found` from loading into a model whose state dict is `expected`: missing,
    unexpected and mis-shaped tensors, the first few of each, with keys spelled by `name`."""
    missing = [name(key) for key in expected if key not in found]
    unexpected = [name(key) for key in found if key not in expected]
    shapes = [
        f"{name(key)} {tuple(found[key].shape)} (expected {tuple(value.shape)})"
        for key, value in expected.items()
        if key in found and found[key].shape != value.shape
    ]
    labelled = (("missing ", missing), ("unexpected ", unexpected), ("wrong shape: ", shapes))
    return [label + few(items) for label, items in labelled if items]


def few(items: list[str], limit: int = 4) -> str:
    """The first `limit` items, and how many more there are."""
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more

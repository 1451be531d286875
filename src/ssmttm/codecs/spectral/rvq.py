"""Residual vector quantization with k-means codebooks: each stage quantizes what the previous
stages left over, so the first K codes alone already give the coarse picture."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

log = logging.getLogger(__name__)


def nearest(x: Tensor, codebook: Tensor, batch: int = 8192) -> Tensor:
    """x (N, D), codebook (C, D) -> (N,) index of each row's nearest entry (squared Euclidean)."""
    norms = (codebook * codebook).sum(dim=1)  # (C,)
    out = [(norms[None] - 2 * x[i : i + batch] @ codebook.T).argmin(dim=1) for i in range(0, len(x), batch)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def kmeans(x: Tensor, size: int, iterations: int, generator: torch.Generator) -> Tensor:
    """x (N, D) -> (size, D) centroids by Lloyd's algorithm from a random sample of rows. An entry
    left empty moves to a random row, so every code stays in use."""
    if len(x) < size:
        raise ValueError(f"k-means needs at least {size} rows, got {len(x)}")
    centroids = x[torch.randperm(len(x), generator=generator)[:size]].clone()
    for _ in range(iterations):
        index = nearest(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, index, x)
        counts = torch.bincount(index, minlength=size)
        empty = counts == 0
        refill = x[torch.randint(len(x), (int(empty.sum()),), generator=generator)]
        centroids = sums / counts.clamp(min=1)[:, None]
        centroids[empty] = refill
    return centroids


def fit_residual_codebooks(x: Tensor, stages: int, size: int, iterations: int = 25, seed: int = 0) -> Tensor:
    """x (N, D) -> codebooks (stages, size, D), fitted stage by stage on the residuals."""
    generator = torch.Generator().manual_seed(seed)
    residual = x.float().clone()
    books = []
    for stage in range(stages):
        book = kmeans(residual, size, iterations, generator)
        residual -= book[nearest(residual, book)]
        log.info("codebook %d: residual rms %.4f", stage, float(residual.pow(2).mean().sqrt()))
        books.append(book)
    return torch.stack(books)


def quantize(x: Tensor, codebooks: Tensor) -> Tensor:
    """x (N, D), codebooks (K, C, D) -> codes (N, K), greedily stage by stage."""
    residual = x.float().clone()
    codes = []
    for book in codebooks:
        index = nearest(residual, book)
        residual -= book[index]
        codes.append(index)
    return torch.stack(codes, dim=1) if codes else torch.zeros(len(x), 0, dtype=torch.long)


def dequantize(codes: Tensor, codebooks: Tensor) -> Tensor:
    """codes (N, K) with K <= len(codebooks) -> (N, D): the sum of the first K stages' entries."""
    out = torch.zeros(codes.shape[0], codebooks.shape[-1], dtype=codebooks.dtype)
    for k in range(codes.shape[1]):
        out += codebooks[k][codes[:, k]]
    return out

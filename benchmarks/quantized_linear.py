"""How fast each weight format streams a decoding step's Linears: ours against ATen's.

Every Linear of simba-300m (random weights, its real shapes: 24 blocks of in_proj, out_proj, fc1
and fc2, and the heads), multiplied in turn by `rows` rows of activations, as one decoding step
does. Per format and row count: milliseconds for the whole pass, and the weights' bytes over that
time (GB/s). The formats:

  fp32, bf16        ops/linear.py's path (our C++ loop up to 8 rows, ATen's matmul past it)
  int8, int4-g<n>   ops/quantize.py's packed weights through our kernel (activations quantized per row)
  aten int8         torch._weight_int8pack_mm: int8 weights with a bf16 scale a row, bf16 activations
  aten int4-g<n>    torch._weight_int4pack_mm_for_cpu: ATen's own int4 packing, bf16 activations
                    (its packing wants outputs a multiple of 16 and inputs of the group: padded)

Each round times every format once, in turn, so that all of them meet the same machine; the table
gives each one's median over the rounds, with the read bandwidth (summing 1 GiB) sampled before
and after as the yardstick. ATen's int8 path with fp32 activations was slower than fp32 weights
(3-7x, issue 28), so it is timed with bf16 ones only, which favours it.

    python benchmarks/quantized_linear.py                 # rows 1, 2, 4, 8, 16; 7 rounds
    python benchmarks/quantized_linear.py --rows 2 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from speed_common import THREADS, build, machine_line, read_bandwidth_gbs
from torch import Tensor, nn

from ssmttm.ops import quantize as Q
from ssmttm.ops.linear import linear

PRESET = "simba-300m"
GROUPS = (32, 64, 128)


def linears() -> list[nn.Linear]:
    """simba-300m's Linears that a decoding step multiplies by (the text projection is not one)."""
    lm, _ = build(PRESET, 2)
    return [m for name, m in lm.named_modules() if isinstance(m, nn.Linear) and not name.startswith("text_proj")]


def copies(layers: list[nn.Linear], convert: Callable[[nn.Linear], nn.Module]) -> list[nn.Linear]:
    """A converted copy of each Linear (the originals stay fp32 for the next format)."""
    out = []
    for m in layers:
        c = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        c.load_state_dict(m.state_dict())
        out.append(convert(c))
    return out


def through_linear(layers: list[nn.Linear]) -> tuple[Callable[[Tensor], None], int]:
    """A pass through ops/linear.py's `linear`, and the weights' bytes."""
    nbytes = sum(c.weight.numel() * c.weight.element_size() for c in layers)
    return lambda x: [linear(x[:, : c.in_features], c) for c in layers], nbytes


def float_pass(layers: list[nn.Linear], dtype: torch.dtype) -> tuple[Callable[[Tensor], None], int]:
    return through_linear(copies(layers, lambda c: c.to(dtype)))


def ours(layers: list[nn.Linear], fmt: str, group: int) -> tuple[Callable[[Tensor], None], int]:
    return through_linear(copies(layers, lambda c: Q.quantize_linear_weights(c, fmt, group)))


def aten_int8(layers: list[nn.Linear]) -> tuple[Callable[[Tensor], None], int]:
    packed = []
    for m in layers:
        k = m.in_features
        p = Q.pack_int8(m.weight)  # values, then each row's fp32 scale
        packed.append((k, p[:, :k].contiguous(), p[:, k:].contiguous().view(torch.float32)[:, 0].bfloat16()))
    nbytes = sum(q.numel() + s.numel() * 2 for _, q, s in packed)
    return lambda x: [torch._weight_int8pack_mm(x[:, :k].bfloat16(), q, s) for k, q, s in packed], nbytes


def aten_int4(layers: list[nn.Linear], group: int) -> tuple[Callable[[Tensor], None], int]:
    packed = []
    for m in layers:
        n, k = m.weight.shape
        n, k = -(-n // 16) * 16, -(-k // group) * group  # ATen's packing wants these: padded, as a user would
        values = torch.randint(0, 16, (n, k), dtype=torch.int32)  # speed only: the values do not matter
        scales = torch.randn(k // group, n, 2).bfloat16()
        packed.append((k, torch._convert_weight_to_int4pack_for_cpu(values, 2), scales))
    nbytes = sum(p.numel() + s.numel() * 2 for _, p, s in packed)
    return lambda x: [
        torch._weight_int4pack_mm_for_cpu(_cols(x, k).bfloat16(), p, group, s) for k, p, s in packed
    ], nbytes


def _cols(x: Tensor, k: int) -> Tensor:
    """x's first k columns, zeros past its own width."""
    return x[:, :k] if x.shape[1] >= k else torch.nn.functional.pad(x, (0, k - x.shape[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,2,4,8,16", help="comma-separated row counts (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of every format in turn (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    layers = linears()
    formats: dict[str, tuple[Callable[[Tensor], None], int]] = {
        "fp32": float_pass(layers, torch.float32),
        "bf16": float_pass(layers, torch.bfloat16),
        "int8": ours(layers, "int8", 64),
        **{f"int4-g{g}": ours(layers, "int4", g) for g in GROUPS},
        "aten int8": aten_int8(layers),
        **{f"aten int4-g{g}": aten_int4(layers, g) for g in GROUPS},
    }
    widest = max(m.in_features for m in layers)
    print(machine_line())
    bandwidth = [read_bandwidth_gbs()]
    print(f"{PRESET}: {len(layers)} Linears; median of {args.rounds} rounds, every format in turn each round\n")
    print("| rows | " + " | ".join(formats) + " |")
    print("|---|" + "---|" * len(formats))
    with torch.no_grad():
        for rows in (int(r) for r in args.rows.split(",")):
            x = torch.randn(rows, widest)
            times: dict[str, list[float]] = {name: [] for name in formats}
            for run, _ in formats.values():
                run(x)  # warm: first-touch pages, the kernels' build
            for _ in range(args.rounds):
                for name, (run, _) in formats.items():
                    start = time.perf_counter()
                    run(x)
                    times[name].append(time.perf_counter() - start)
            cells = []
            for name, (_, nbytes) in formats.items():
                seconds = statistics.median(times[name])
                cells.append(f"{seconds * 1e3:.1f} ms, {nbytes / seconds / 1e9:.1f} GB/s")
            print(f"| {rows} | " + " | ".join(cells) + " |", flush=True)
    bandwidth.append(read_bandwidth_gbs())
    sizes = ", ".join(f"{name} {nbytes / 1e6:.0f} MB" for name, (_, nbytes) in formats.items())
    print(f"\nweights: {sizes}")
    print(f"read bandwidth (summing 1 GiB) before and after: {bandwidth[0]:.1f} and {bandwidth[1]:.1f} GB/s")


if __name__ == "__main__":
    main()

"""Memory of a loaded pipeline in fp32 and bf16: what a reduced precision costs or saves.

A random simba-300m-sized export (287M parameters, the embedded codec's 4 x 1024 codes and MiniLM's
384-d text) is loaded with `TextToMusic.from_pretrained(precision=...)` in a fresh process per
precision, which then generates 0.5 s. Printed per precision:
  anon after load   the process's anonymous memory (RssAnon) once loaded: what it holds itself;
  peak              its peak RSS over the whole run (VmHWM), which also counts the pages of the
                    weights file while they are mapped.

    python benchmarks/load_memory.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from speed_common import THREADS, in_process, machine_line, worker

from ssmttm.generation.pipeline import TextToMusic
from ssmttm.lm import MusicLM
from ssmttm.presets import load_preset
from ssmttm.pretrained import save_pretrained

PRESET, OVERRIDES = "simba-300m", ["text_dim=384", "num_codebooks=4", "cardinality=1024"]


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status (RssAnon, VmHWM), MiB. VmHWM, not getrusage's maxrss,
    which a process started by fork and exec inherits from its parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def run_load(folder: str, precision: str) -> dict:
    model = TextToMusic.from_pretrained(folder, precision=precision)
    loaded = status_mib("RssAnon")
    model.generate_codes("calm piano", duration=0.5, seed=0)
    return {"anon_after_load_mib": loaded, "peak_rss_mib": status_mib("VmHWM")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker({"load": run_load}, json.loads(args.worker))
        return
    torch.set_num_threads(THREADS)
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        lm = MusicLM(load_preset(PRESET, OVERRIDES))
        params = sum(p.numel() for p in lm.parameters())
        folder = str(save_pretrained(lm, Path(tmp) / "model", codec="embedded", text_encoder="minilm"))
        del lm
        print(f"{PRESET} ({', '.join(OVERRIDES)}): {params / 1e6:.0f}M parameters, random weights")
        for precision in ("fp32", "bf16"):
            found = in_process("load", folder=folder, precision=precision)
            print(
                f"{precision}: anon after load {found['anon_after_load_mib']:.0f} MiB, "
                f"peak {found['peak_rss_mib']:.0f} MiB"
            )


if __name__ == "__main__":
    main()

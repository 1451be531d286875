"""The run folder: what a training run writes, and where. `ssmttm train` writes it; `export`,
`plot` and the miniature study read it.

    config.yaml              the resolved TrainConfig (also inside every checkpoint)
    run.json                 what the task's data setup records for export (the LM: codec and
                             text-encoder ids, window length)
    checkpoints/last.ckpt    the latest checkpoint, replaced atomically
    metrics.csv              kind,step,loss,tokens,flops,wall_s,lr: `train` rows every log_every
                             steps, `val` rows at every validation; tokens, flops and wall_s are
                             cumulative training figures at that optimizer step
    tensorboard/             the same scalars for TensorBoard
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssmttm.files import read_json

CONFIG = "config.yaml"
RUN_INFO = "run.json"
CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
METRICS = "metrics.csv"
METRIC_FIELDS = ("kind", "step", "loss", "tokens", "flops", "wall_s", "lr")
TENSORBOARD = "tensorboard"


def last_checkpoint(run_dir: str | Path) -> Path | None:
    path = Path(run_dir) / CHECKPOINT_DIR / LAST
    return path if path.is_file() else None


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_INFO
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run folder (no {RUN_INFO})")
    return read_json(path)

"""The authors' released checkpoints (github.com/Lonian6/SSM-TTM): import into our exported format.

    ssmttm import-release --ckpt simba.ckpt --config config.json --out models/release

`layout.py` maps the release's names and sizes onto our SiMBA; `importer.py` reads the file
without running pickled code and writes `model.safetensors` + `config.json`. The converted model
uses the release's text layout (`ssmttm.text.release`) and sampling settings.
"""

from ssmttm.release.importer import RELEASE_SAMPLING, ImportResult, import_release, read_checkpoint
from ssmttm.release.layout import ReleaseError, ReleaseShape, build_lm, infer_shape, lm_config

__all__ = [
    "RELEASE_SAMPLING",
    "ImportResult",
    "ReleaseError",
    "ReleaseShape",
    "build_lm",
    "import_release",
    "infer_shape",
    "lm_config",
    "read_checkpoint",
]

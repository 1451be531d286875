"""What any front end needs, owned by the library: device choice, the precision policy, the record
of a generation; and `import ssmttm` that changes nothing process-wide."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from ssmttm.config import SamplingConfig
from ssmttm.generation import pipeline
from ssmttm.generation.pipeline import TextToMusic
from ssmttm.generation.precision import Precision, resolve_device
from ssmttm.generation.record import generation_record
from ssmttm.lm import MusicLM
from ssmttm.presets import load_preset
from ssmttm.pretrained import save_pretrained

TINY = ["backbone.d_model=32", "backbone.n_layers=2", "backbone.mlp_hidden=64", "backbone.mamba2.headdim=16"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    lm = MusicLM(load_preset("tiny-simba", TINY))
    return save_pretrained(lm, tmp_path_factory.mktemp("model"), codec="embedded", text_encoder="minilm")


@pytest.mark.parametrize(
    ("name", "kind", "expected"),
    [
        ("fp32", "simba", Precision()),
        ("bf16", "simba", Precision(torch.bfloat16, torch.bfloat16)),
        ("bf16", "mamba", Precision(torch.bfloat16, torch.bfloat16)),
        ("bf16", "simba3", Precision(torch.bfloat16, torch.bfloat16)),
        ("bf16", "transformer", Precision(torch.bfloat16, torch.float32)),  # a KV cache is not a recurrent state
        ("int8", "simba", Precision(torch.float32, torch.bfloat16, quantized="int8")),
        ("int4", "mamba", Precision(torch.float32, torch.bfloat16, quantized="int4")),
        ("int8", "transformer", Precision(torch.float32, torch.float32, quantized="int8")),
    ],
)
def test_precision_names_resolve_by_what_the_backbone_keeps(name, kind, expected):
    assert Precision.named(name, kind) == expected
    assert expected.name == name


def test_the_cli_offers_every_precision_name():
    from ssmttm.generation.command import PRECISIONS  # spelled out there, so that --help imports no torch

    assert tuple(PRECISIONS) == Precision.NAMES


@pytest.mark.parametrize(("name", "weight_format"), [("int8", "int8"), ("int4", "int4-g64")])
def test_int8_and_int4_quantize_at_load_and_the_record_says_so(model_dir, name, weight_format):
    model = TextToMusic.from_pretrained(model_dir, precision=name)
    assert model.generator.lm is model.lm  # quantized in place: no fp32 copy kept beside it
    linears = [m for m in model.lm.modules() if isinstance(m, nn.Linear)]
    assert linears and all(m.weight.dtype == (torch.int8 if name == "int8" else torch.uint8) for m in linears)
    record = generation_record(model, prompt="calm piano", seed=1, duration=0.5, sampling=SamplingConfig(), elapsed=1)
    assert (record["precision"], record["weight_dtype"], record["state_dtype"]) == (name, weight_format, "bfloat16")
    codes = model.generate_codes("calm piano", duration=0.5, seed=3)
    assert codes.shape[-1] > 0 and int(codes.max()) < model.lm.cfg.cardinality
    with pytest.raises(ValueError, match=f"precision {name} cannot be saved: its weights are packed"):
        model.save_pretrained(model_dir.parent / "copy")
    with pytest.raises(ValueError, match="int4 group size 48: choose one of 32, 64, 128"):
        Precision(quantized="int4", group=48)
    assert Precision(quantized="int4", group=128).name == "int4-g128"


def test_unknown_precisions_and_devices_are_one_line_errors():
    with pytest.raises(ValueError, match="precision 'fp8': choose one of fp32, bf16, int8, int4"):
        Precision.named("fp8", "simba")
    with pytest.raises(ValueError, match="device gpu7: not a device name"):
        resolve_device("gpu7")
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="a transformer keeps its decoding state in float32, not bfloat16"):
        Precision(state_dtype=torch.bfloat16).check("transformer")
    with pytest.raises(ValueError, match="a simba decodes with float32 or bfloat16 weights, not float16"):
        Precision(weight_dtype=torch.float16).check("simba")


def test_bf16_keeps_no_fp32_copy_of_the_weights(model_dir):
    model = TextToMusic.from_pretrained(model_dir, precision="bf16")
    assert model.generator.lm is model.lm  # one model, not an fp32 one beside a cast copy
    linears = [m for m in model.lm.modules() if isinstance(m, nn.Linear)]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    assert model.generator.state_dtype == torch.bfloat16 and model.precision.name == "bf16"
    fp32 = TextToMusic.from_pretrained(model_dir)
    # The same codes as a generator that casts a private copy of an fp32 model (the old way).
    assert torch.equal(
        model.generate_codes("calm piano", duration=0.5, seed=3),
        _copy_cast(fp32).generate_codes("calm piano", 0.5, seed=3),
    )


def _copy_cast(model: TextToMusic) -> TextToMusic:
    import copy

    from ssmttm.generation import Generator

    model.generator = Generator(
        copy.deepcopy(model.lm), weight_dtype=torch.bfloat16, state_dtype=torch.bfloat16
    )  # keeps model.lm in fp32 beside it
    return model


def test_the_record_says_what_made_the_audio(model_dir):
    model = TextToMusic.from_pretrained(model_dir, device="auto")
    record = generation_record(
        model, prompt="calm piano", seed=4, duration=2.0, sampling=SamplingConfig(top_k=7), elapsed=1.23456
    )
    assert record["model"] == str(model_dir) and record["device"] == model.device
    assert (record["precision"], record["weight_dtype"], record["state_dtype"]) == ("fp32", "float32", "float32")
    assert record["sampling"] == {"cfg_scale": 3.0, "temperature": 1.0, "top_k": 7, "top_p": 0.0}
    assert (record["generation_s"], record["codec"], record["continue_from"]) == (1.235, "embedded", None)


def test_loading_and_the_cli_opt_in_to_the_allocator_tuning(model_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(pipeline, "tune_allocator", lambda: calls.append("from_pretrained"))
    TextToMusic.from_pretrained(model_dir)
    from ssmttm import cli

    monkeypatch.setattr(cli, "tune_allocator", lambda: calls.append("cli"))
    assert cli.main(["presets"]) == 0
    assert calls == ["from_pretrained", "cli"]


def test_importing_the_library_changes_nothing_process_wide(tmp_path):
    """No allocator tuning and no matplotlib backend switch, even through the figures."""
    script = textwrap.dedent(
        """
        import ctypes
        touched = []
        real_cdll = ctypes.CDLL
        class Spy:
            def __init__(self, lib):
                self.lib = lib
            def __getattr__(self, name):
                touched.append(name)
                return getattr(self.lib, name)
        ctypes.CDLL = lambda *a, **k: Spy(real_cdll(*a, **k))
        import matplotlib
        matplotlib.use("svg")
        import numpy as np
        import ssmttm, ssmttm.lm, ssmttm.generation.pipeline, ssmttm.training.trainer
        from ssmttm.plots import save_spectrograms
        save_spectrograms(r"{out}", [("tone", np.sin(np.arange(8000) / 5.0).astype(np.float32), 8000)], fmax=4000)
        assert "mallopt" not in touched, touched
        assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
        print("clean")
        """
    ).format(out=tmp_path / "spec.png")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "clean", done.stderr[-2000:]
    assert (tmp_path / "spec.png").stat().st_size > 0

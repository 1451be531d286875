"""The GPU path: skipped where torch sees no CUDA device (CI, laptops), run on a GPU machine.

There is no CUDA code of our own: these tests prove that the pure-PyTorch path, checked on the CPU
against mamba_ssm's outputs, gives the same numbers on a GPU, that decoding step by step still equals
the parallel forward there, and that generation, the pipeline (LM and text encoder on the GPU, the
CPU-only embedded codec on the CPU), the CLI's `--device` and training run on it.

SSMTTM_TEST_DEVICE names another device to run them on (`cpu` checks the tests themselves).
"""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import KINDS, tiny_lm
from test_golden import build_mixer, load_golden
from test_lm import inputs, left_padded_mask, teacher_forced
from test_mamba3 import STATE_FIELDS, assert_state, run_steps
from test_mamba3 import load_golden as load_mamba3_golden
from test_training import make_collection, metrics, train_config

from ssmttm.backbones.base import Context
from ssmttm.backbones.mamba3 import Mamba3State
from ssmttm.cli import main
from ssmttm.conditioning import Conditioning
from ssmttm.generation import Generator, SamplingConfig
from ssmttm.generation.cuda_graph import GraphedStep
from ssmttm.generation.pipeline import TextToMusic
from ssmttm.lm import MusicLM
from ssmttm.presets import load_preset
from ssmttm.pretrained import save_pretrained
from ssmttm.training.config import resolve
from ssmttm.training.trainer import Trainer

DEVICE = os.environ.get("SSMTTM_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA device")
MODES = [(kind, cond) for kind in KINDS for cond in ("prefix", "cross")]
TINY = ["backbone.d_model=32", "backbone.n_layers=2", "backbone.mlp_hidden=64", "backbone.mamba2.headdim=16"]


@pytest.fixture(autouse=True)
def _full_fp32():
    """TF32 matmuls and convolutions would differ from the CPU by ~1e-3: these tests compare our
    code across devices, so they switch TF32 off."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def on_device(*tensors):
    return [t.to(DEVICE) for t in tensors]


@pytest.mark.parametrize(("kind", "cond"), MODES)
def test_forward_on_cuda_equals_the_cpu_and_steps_equal_the_forward(kind, cond):
    lm = tiny_lm(kind, cond)
    seq, text = inputs(lm)
    mask = left_padded_mask([5, 2])
    gpu = copy.deepcopy(lm).to(DEVICE)
    with torch.no_grad():
        cpu_logits = lm(seq, Conditioning(text, mask))
        on_gpu = on_device(seq, text, mask)
        gpu_logits = gpu(on_gpu[0], Conditioning(*on_gpu[1:]))
    assert gpu_logits.device.type == torch.device(DEVICE).type
    torch.testing.assert_close(gpu_logits.cpu(), cpu_logits, atol=1e-4, rtol=0)
    stepped, _ = teacher_forced(gpu, *on_device(seq, text, mask), 3)
    torch.testing.assert_close(stepped, gpu_logits[:, :, 3:], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["mamba2", "mamba"])
def test_mixers_on_cuda_match_mamba_ssm(golden_dir, name):
    golden, config, weights = load_golden(golden_dir, name)
    mixer = build_mixer(name, config, 8).eval()
    mixer.load_state_dict(weights, strict=True)
    mixer.to(DEVICE)
    x = golden["input"].to(DEVICE)
    with torch.no_grad():
        y, state = mixer.prefill(x, Context())
        y0, stepped = mixer.prefill(x[:, :5], Context())
        ys = [y0]
        for t in range(5, x.shape[1]):
            out, stepped = mixer.step(x[:, t], stepped)
            ys.append(out[:, None])
    torch.testing.assert_close(y.cpu(), golden["output"], atol=1e-4, rtol=0)
    torch.testing.assert_close(state.ssm.cpu(), golden["final_ssm_state"], atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cat(ys, 1).cpu(), golden["output"], atol=1e-4, rtol=0)
    torch.testing.assert_close(stepped.conv.cpu(), golden["final_conv_state"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["mamba3", "mamba3_mimo"])
def test_mamba3_on_cuda_matches_mamba_ssm(golden_dir, name):
    golden, mixer = load_mamba3_golden(golden_dir, name, chunk_size=8)
    mixer.to(DEVICE)
    x = golden["input"].to(DEVICE)
    with torch.no_grad():
        y, _ = mixer.prefill(x, Context())
        y0, state = mixer.prefill(x[:, :5], Context())
        y1, state = run_steps(mixer, x[:, 5:], state)
    assert y.device.type == torch.device(DEVICE).type
    torch.testing.assert_close(y.cpu(), golden["output"], atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cat([y0, y1], 1).cpu(), golden["output"], atol=1e-4, rtol=0)
    assert_state(Mamba3State(**{f: getattr(state, f).cpu() for f in STATE_FIELDS}), golden, "state")


@pytest.mark.parametrize("kind", KINDS)
def test_generation_on_cuda_is_seeded_guided_and_greedy_like_the_cpu(kind):
    lm = tiny_lm(kind, "cross")
    text = torch.randn(2, 5, 6)
    gpu = Generator(copy.deepcopy(lm).to(DEVICE))
    sampled = SamplingConfig(cfg_scale=3.0, top_k=5)
    first = gpu.generate(Conditioning(text.to(DEVICE)), 20, sampling=sampled, seed=7)
    assert first.device.type == torch.device(DEVICE).type and first.shape == (2, lm.cfg.num_codebooks, 20)
    assert int(first.max()) < lm.cfg.cardinality  # no special id reaches the audio
    assert torch.equal(first, gpu.generate(Conditioning(text.to(DEVICE)), 20, sampling=sampled, seed=7))
    assert not torch.equal(first, gpu.generate(Conditioning(text.to(DEVICE)), 20, sampling=sampled, seed=8))
    greedy = SamplingConfig(cfg_scale=3.0, top_k=1)
    on_gpu = gpu.generate(Conditioning(text.to(DEVICE)), 20, sampling=greedy).cpu()
    on_cpu = Generator(lm).generate(Conditioning(text), 20, sampling=greedy)
    assert torch.equal(on_gpu, on_cpu)


GRAPHED = pytest.mark.skipif(not DEVICE.startswith("cuda"), reason="CUDA graphs need a CUDA device")


@GRAPHED
@pytest.mark.parametrize(("kind", "cond"), [mode for mode in MODES if mode[0] != "transformer"])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_a_graphed_step_replays_the_eager_step(kind, cond, state_dtype):
    lm = tiny_lm(kind, cond, positions="sinusoidal", beat_clock=True).to(DEVICE)
    with torch.no_grad():
        lm.clock.weight.normal_(0.0, 1.0)
    text = torch.randn(2, 5, 6, device=DEVICE)
    clock = torch.tensor([[0.1, 0.3], [float("nan")] * 2], dtype=torch.float64, device=DEVICE)
    seq = torch.randint(0, 11, (2, 3, 12), device=DEVICE)
    with torch.no_grad():
        _, eager = lm.prefill(Conditioning(text, None, clock), seq[..., :2])
        eager = eager.with_recurrent_dtype(state_dtype)
        graphed = GraphedStep(lm, eager.clone(), seq[..., 0])
        for s in range(2, 12):
            expected, eager = lm.step(seq[..., s], eager)
            torch.testing.assert_close(graphed(seq[..., s]), expected, atol=1e-5, rtol=0)
    assert int(graphed.state.position) == eager.position and int(graphed.state.column) == eager.column
    assert {layer.mixer.ssm.dtype for layer in graphed.state.backbone.layers} == {state_dtype}


@GRAPHED
@pytest.mark.parametrize("kind", [k for k in KINDS if k != "transformer"])
def test_graphed_generation_gives_the_eager_tokens(kind, monkeypatch):
    lm = tiny_lm(kind, "cross", positions="sinusoidal", beat_clock=True).to(DEVICE)
    with torch.no_grad():
        lm.clock.weight.normal_(0.0, 1.0)
    text, clock = torch.randn(2, 5, 6, device=DEVICE), torch.tensor([[0.1, 0.3], [0.05, 0.0]], device=DEVICE)
    replays = []
    replay = GraphedStep.__call__
    monkeypatch.setattr(GraphedStep, "__call__", lambda self, tokens: replays.append(1) or replay(self, tokens))
    for sampling in (SamplingConfig(cfg_scale=3.0, temperature=1.0, top_k=5), SamplingConfig(cfg_scale=1.0, top_k=1)):
        run = {
            g: Generator(lm, cuda_graph=g).generate(Conditioning(text, None, clock), 30, sampling=sampling, seed=4)
            for g in (False, True)
        }
        assert torch.equal(run[True], run[False])
        prompt = run[True][..., :9]  # a continuation: the prompt's columns prefill, the rest replays
        cont = {
            g: Generator(lm, cuda_graph=g).generate(
                Conditioning(text, None, clock), 30, sampling=sampling, seed=5, continuation=prompt
            )
            for g in (False, True)
        }
        assert torch.equal(cont[True], cont[False]) and torch.equal(cont[True][..., :9], prompt)
    assert len(replays) > 50  # the graphed runs did replay


@GRAPHED
def test_a_bf16_state_generates_the_same_tokens_graphed_or_eager():
    lm = tiny_lm("simba", "cross").to(DEVICE)
    text = torch.randn(2, 5, 6, device=DEVICE)
    sampling = SamplingConfig(cfg_scale=3.0, temperature=1.0, top_k=5)
    run = {
        g: Generator(lm, cuda_graph=g, state_dtype=torch.bfloat16).generate(
            Conditioning(text), 30, sampling=sampling, seed=4
        )
        for g in (False, True)
    }
    assert torch.equal(run[True], run[False])


def test_the_transformer_decodes_eagerly_on_cuda():
    lm = tiny_lm("transformer", "cross").to(DEVICE)
    text = torch.randn(1, 5, 6, device=DEVICE)
    assert Generator(lm).generate(Conditioning(text), 8, seed=0).shape == (1, lm.cfg.num_codebooks, 8)
    with pytest.raises(ValueError, match="needs a CUDA device and a fixed-size state"):
        Generator(lm, cuda_graph=True).generate(Conditioning(text), 8, seed=0)


@pytest.fixture(scope="module")
def clocked_dir(tmp_path_factory, tiny_t5_dir):
    """The demo model's kind (the embedded codec, a text encoder with the tempo position, a beat
    clock), with a tiny T5 for MiniLM: a GPU machine need not have MiniLM's package installed."""
    torch.manual_seed(0)
    lm = MusicLM(load_preset("tiny-simba", [*TINY, "beat_clock=true", "text_dim=768"]))
    with torch.no_grad():
        lm.clock.weight.normal_(0.0, 1.0)
    directory = tmp_path_factory.mktemp("model")
    return save_pretrained(lm, directory, codec="embedded", text_encoder=f"{tiny_t5_dir}+tempo")


def test_pipeline_on_cuda_matches_the_cpu_and_streams_like_it_generates(clocked_dir):
    model = TextToMusic.from_pretrained(clocked_dir, device=DEVICE)
    assert next(model.lm.parameters()).device.type == torch.device(DEVICE).type
    prompts = ["funky bass at 110 BPM", "calm piano"]
    wav = model.generate(prompts, duration=1.0, seed=0)
    assert wav.device.type == "cpu" and wav.shape == (2, 1, model.sample_rate)
    streamed = torch.cat(list(model.stream(prompts, duration=1.0, seed=0, chunk_seconds=0.3)), -1)
    assert torch.allclose(streamed, wav, atol=1e-5)
    greedy = {"temperature": 0.0, "seed": 0}
    gpu_codes = model.generate_codes(prompts, duration=0.5, **greedy).cpu()
    cpu_codes = TextToMusic.from_pretrained(clocked_dir).generate_codes(prompts, duration=0.5, **greedy)
    assert torch.equal(gpu_codes, cpu_codes)
    clip = wav[0, 0, : model.sample_rate // 2].numpy()  # a continuation: encoded on the CPU, continued on the GPU
    codes = model.generate_codes(["calm piano"], 1.0, continuation=clip, continuation_rate=model.sample_rate)
    given = model.codec.encode(torch.from_numpy(clip)[None, None], model.sample_rate)
    assert torch.equal(codes[..., : given.shape[-1]].cpu(), given)


def test_cli_generates_on_device(clocked_dir, tmp_path):
    out = tmp_path / "out.wav"
    argv = ["generate", "a jazz trio at 90 BPM", "--model", str(clocked_dir), "--device", DEVICE]
    assert main([*argv, "--duration", "1", "-o", str(out)]) == 0
    wav, rate = sf.read(out)
    assert len(wav) == rate and np.isfinite(wav).all()
    assert json.loads((tmp_path / "out.wav.json").read_text())["device"] == DEVICE


def test_training_on_cuda_starts_from_the_cpu_loss_and_learns(tmp_path, tiny_t5_dir):
    collection = make_collection(tmp_path / "collection")
    text = [f"data.text_encoder={tiny_t5_dir}", "model.text_dim=768"]
    losses = {}
    for accelerator in ("cpu", DEVICE):
        # no dropout of any kind: random draws differ between devices
        steps = ["schedule.max_steps=20", "model.backbone.dropout=0.0", "model.caption_dropout=0.0"]
        steps.append("model.token_dropout=0.0")
        config = resolve(train_config(collection, accelerator=accelerator), [*text, *steps])
        Trainer(config, tmp_path / accelerator).fit()
        losses[accelerator] = [float(loss) for _, loss in metrics(tmp_path / accelerator)]
    assert losses[DEVICE][0] == pytest.approx(losses["cpu"][0], abs=1e-3)  # same init, same batch
    assert losses[DEVICE][-1] < 0.7 * losses[DEVICE][0]
    bf16 = resolve(
        train_config(collection, accelerator=DEVICE, precision="bf16-mixed"), [*text, "schedule.max_steps=5"]
    )
    assert Trainer(bf16, tmp_path / "bf16").fit().step == 5

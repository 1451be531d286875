from dataclasses import replace

import pytest

from ssmttm.config import ConfigError, apply_overrides, from_dict, load_yaml, save_yaml, to_dict
from ssmttm.lm import LMConfig
from ssmttm.presets import load_preset, preset_names


def test_yaml_round_trip(tmp_path):
    cfg = load_preset("tiny-simba", ["backbone.n_layers=3", "label_smoothing=0.2"])
    save_yaml(cfg, tmp_path / "c.yaml")
    assert load_yaml(LMConfig, tmp_path / "c.yaml") == cfg
    assert cfg.backbone.n_layers == 3 and cfg.label_smoothing == 0.2


def test_every_preset_loads_and_round_trips_through_a_dict():
    assert len(preset_names()) == 18  # 6 paper-sized, 4 at 75m, 6 tiny, the demo model and its Mamba-3 twin
    for name in preset_names():
        cfg = load_preset(name)
        assert from_dict(LMConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"backbone": {"d_modle": 3}}, "unknown key in backbone: d_modle"),
        ({"pattern": "zigzag"}, "pattern: 'zigzag' is not one of delay, parallel"),
        ({"num_codebooks": "four"}, "num_codebooks: expected int"),
        ({"num_codebooks": True}, "num_codebooks: expected int"),
        ({"backbone": 3}, "backbone: expected a mapping"),
        ({"positions": "rope"}, "rope needs self-attention"),
    ],
)
def test_bad_configs_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(LMConfig, data)


def test_ints_and_exponent_strings_are_accepted_as_floats():
    assert from_dict(LMConfig, {"label_smoothing": 0}).label_smoothing == 0.0
    # YAML 1.1 reads 1e-4 without a dot as a string; a user writing it means a float
    assert load_preset("tiny-simba", ["label_smoothing=1e-4"]).label_smoothing == 1e-4
    with pytest.raises(ConfigError, match="label_smoothing: expected float"):
        from_dict(LMConfig, {"label_smoothing": "lots"})


def test_overrides_parse_yaml_scalars_and_reject_malformed_items():
    data = apply_overrides({"a": {"b": 1}}, ["a.b=2", "a.c=true", "d=0.5"])
    assert data == {"a": {"b": 2, "c": True}, "d": 0.5}
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        apply_overrides({}, ["justakey"])


def test_unknown_preset_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_preset("nope")
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(LMConfig, tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(LMConfig, tmp_path / "bad.yaml")


def test_every_training_config_resolves_and_paper_ones_keep_the_recipe():
    from ssmttm.config import read_yaml
    from ssmttm.presets import PRESET_DIR
    from ssmttm.training.config import load_train_config

    configs = sorted((PRESET_DIR / "train").glob("*.yaml"))
    assert len(configs) == 19
    for path in configs:
        config = load_train_config(path)
        model = read_yaml(path)["model"]
        if isinstance(model, str):  # a preset as it is; a mapping changes it (the next test)
            assert config.model == load_preset(model), path
        # the paper's LM sizes: its recipe, untouched (it gives none for a stage 2)
        if not path.stem.startswith(("tiny-", "demo")) and config.task == "lm":
            optim, schedule = config.optim, config.schedule
            assert (optim.lr, optim.weight_decay, optim.beta1, optim.beta2, optim.eps) == (1e-4, 0.02, 0.9, 0.999, 1e-7)
            assert (schedule.warmup_steps, schedule.final_lr_fraction, config.run.batch_size) == (500, 0.005, 128)
            assert optim.grad_clip == 0 and config.run.precision == "auto"


def test_a_training_model_is_a_preset_with_the_keys_that_differ(tmp_path):
    from ssmttm.training.config import load_train_config

    (tmp_path / "run.yaml").write_text("model:\n  preset: demo-simba\n  num_codebooks: 1\n  backbone: {n_layers: 3}\n")
    cfg = load_train_config(tmp_path / "run.yaml", ["--model.beat_clock=true"])
    demo = load_preset("demo-simba")
    assert (cfg.model.num_codebooks, cfg.model.backbone.n_layers, cfg.model.beat_clock) == (1, 3, True)
    # the rest of the preset, nested sections included, is kept
    assert cfg.model.backbone.d_model == demo.backbone.d_model and cfg.model.backbone.mamba2 == demo.backbone.mamba2
    assert cfg.model.text_dim == demo.text_dim


def test_an_override_swaps_the_preset_and_keeps_the_keys_that_differ(tmp_path):
    """`--model.preset=NAME` is applied before the preset is written out, so the config's own
    changes stay; `--model=NAME` takes the preset whole. Other overrides still apply after."""
    from ssmttm.training.config import load_train_config

    (tmp_path / "run.yaml").write_text("model:\n  preset: demo-simba3\n  beat_clock: true\n")
    cfg = load_train_config(tmp_path / "run.yaml", ["--model.preset=demo-simba", "--model.backbone.n_layers=3"])
    assert (cfg.model.backbone.kind, cfg.model.beat_clock, cfg.model.backbone.n_layers) == ("simba", True, 3)
    assert cfg.model.backbone.mamba2 == load_preset("demo-simba").backbone.mamba2
    (tmp_path / "named.yaml").write_text("model: demo-simba\n")
    cfg = load_train_config(tmp_path / "named.yaml", ["--model.preset=demo-simba3"])
    assert cfg.model.backbone.kind == "simba3"
    cfg = load_train_config(tmp_path / "run.yaml", ["--model=tiny-simba"])
    assert cfg.model == load_preset("tiny-simba")
    with pytest.raises(ConfigError, match="unknown preset"):
        load_train_config(tmp_path / "run.yaml", ["--model.preset=no-such-preset"])


def test_the_mamba3_comparison_trains_both_demo_backbones_alike():
    """configs/train/demo-simba3.yaml: demo-simba3, and with `--model.preset=demo-simba` the
    same-budget demo-simba it is compared with; nothing but the backbone differs."""
    from ssmttm.training.config import load_train_config

    path = "configs/train/demo-simba3.yaml"
    ours, theirs = load_train_config(path), load_train_config(path, ["--model.preset=demo-simba"])
    assert (ours.model.backbone.kind, theirs.model.backbone.kind) == ("simba3", "simba")
    assert ours.model.beat_clock and ours.data.text_encoder == "minilm+tempo" and ours.schedule.max_steps == 2500
    assert (ours.data, ours.optim, ours.schedule, ours.run) == (theirs.data, theirs.optim, theirs.schedule, theirs.run)
    assert replace(ours.model, backbone=theirs.model.backbone) == theirs.model


def test_the_stage1_demo_config_is_the_demo_model_at_one_codebook():
    from ssmttm.training.config import load_train_config

    cfg = load_train_config("configs/train/demo-stage1.yaml")
    assert cfg.model.num_codebooks == 1 and cfg.model.beat_clock
    assert cfg.data.text_encoder == "minilm+tempo"

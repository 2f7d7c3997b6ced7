from pathlib import Path

import pytest

from anchorlab.config import ConfigError, dump_config, load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.train.iterations > 0


def test_overrides_parse_yaml_values():
    cfg = load_config(
        None, ["train.iterations=7", "model.anchors.aspect_ratios=[1, 2]", "model.num_classes=null"]
    )
    assert cfg.train.iterations == 7
    assert cfg.model.anchors.aspect_ratios == [1.0, 2.0]
    assert cfg.model.num_classes is None


def test_unknown_key_names_it_and_the_allowed_keys():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.hed.norm=gn"])
    msg = str(err.value)
    assert "model.hed" in msg and "did you mean 'head'" in msg and "backbone" in msg


def test_wrong_value_names_allowed_choices():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.detector=yolo9000"])
    assert "model.detector" in str(err.value) and "retinanet" in str(err.value) and "fcos" in str(err.value)


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        load_config(None, ["train.iterations"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_preset_expands_to_coco_schedule(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {preset: 1.5x}\n")
    cfg = load_config(path)
    assert cfg.train.iterations == 135000 and cfg.train.steps == [90000, 120000]
    path.write_text("train: {preset: 9x}\n")
    with pytest.raises(ConfigError, match="1x"):
        load_config(path)


def test_dump_round_trip(tmp_path):
    cfg = load_config(None, ["train.lr=0.123", "data.scale_jitter=[96, 160]"])
    path = tmp_path / "dump.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    "overrides",
    [["model.backbone.norm=frozen_bn"], ["model.backbone.trainable_layers=3"]],
)
def test_random_weights_with_frozen_layers_is_an_error_naming_the_fix(overrides):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.backbone.weights=null", *overrides])
    msg = str(err.value)
    assert "model.backbone.norm: bn" in msg and "trainable_layers: 5" in msg and "imagenet" in msg
    # weights (ImageNet, a file) or init_from make the same settings valid
    load_config(None, ["model.backbone.weights=imagenet", *overrides])
    load_config(None, ["model.backbone.weights=./r50.pth", *overrides])
    load_config(None, ["model.init_from=coco.pt", *overrides])


def test_backbone_weights_values():
    assert load_config(None, ["model.backbone.weights=ImageNet"]).model.backbone.weights == "imagenet"
    assert load_config(None, ["model.backbone.weights=imagenet_v1"]).model.backbone.weights == "imagenet_v1"
    with pytest.raises(ConfigError, match="neither imagenet, imagenet_v1"):
        load_config(None, ["model.backbone.weights=imagenett"])


def test_coco_recipes_start_from_imagenet():
    for path in CONFIGS:
        cfg = load_config(path)
        if cfg.model.backbone.norm == "frozen_bn" or cfg.model.backbone.trainable_layers < 5:
            assert cfg.model.backbone.weights == "imagenet" or cfg.model.init_from, path.name

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


def test_data_keys_pixel_std_and_policy_are_validated():
    with pytest.raises(ConfigError, match=r"model.pixel_std"):
        load_config(None, ["model.pixel_std=[0, 0, 0]"])
    with pytest.raises(ConfigError, match=r"image_outside.*allow\|drop\|error"):
        load_config(None, ["data.policy={image_outside: clip}"])
    with pytest.raises(ConfigError, match=r"data.format"):
        load_config(None, ["data.format=parquet"])
    cfg = load_config(None, ["data.format=cvat", "data.split={val: valid}", "data.classes=[a, b]"])
    assert cfg.data.split == {"val": "valid"} and cfg.data.classes == ["a", "b"]

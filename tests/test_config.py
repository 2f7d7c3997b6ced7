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


def test_grid_move_losers_is_a_deprecated_spelling_of_collision_move():
    with pytest.warns(DeprecationWarning, match="collision: move"):
        cfg = load_config(None, ["model.grid.move_losers=true"])
    assert cfg.model.grid.collision == "move" and cfg.model.grid.move_losers is None
    assert load_config(None, ["model.grid.move_losers=false"]).model.grid.collision == "nearest"
    with pytest.raises(ConfigError, match="contradicts collision: last"):
        load_config(None, ["model.grid.move_losers=true", "model.grid.collision=last"])
    with pytest.raises(ConfigError, match="collision"):
        load_config(None, ["model.grid.collision=first"])


def test_seed_keys_validate():
    cfg = load_config(
        None,
        [
            "data.test=image_info_test-dev2017.json",
            "data.scale_jitter=[640, 672, 704, 736, 768, 800]",
            "model.anchors.offset=0.5",
            "model.fpn.p6_from=c5",
            "model.backbone.name=resnext101_32x4d",
        ],
    )
    assert cfg.data.test == "image_info_test-dev2017.json" and cfg.data.scale_jitter[2] == 704
    assert (cfg.model.anchors.offset, cfg.model.fpn.p6_from) == (0.5, "c5")
    defaults = load_config(None)
    assert (defaults.model.anchors.offset, defaults.model.fpn.p6_from, defaults.model.grid.collision) == (
        0.0,
        "p5",
        "nearest",
    )
    for bad in ("data.scale_jitter=[800, 640]", "model.anchors.offset=1.5", "model.fpn.p6_from=c4"):
        with pytest.raises(ConfigError):
            load_config(None, [bad])


FREE_ANCHOR_ROWS = {
    # config: (backbone, iterations, scale_jitter, prior_prob, P6 source, AP figures in the header)
    "free_anchor_r50_fpn_1x": ("resnet50", 90000, None, 0.02, "p5", ("38.6", "39.1")),
    "free_anchor_r101_fpn_1x": ("resnet101", 90000, None, 0.02, "p5", ("41.0", "41.3")),
    "free_anchor_r101_fpn_1.5x": ("resnet101", 135000, None, 0.02, "p5", ("41.3", "41.8")),
    "free_anchor_r101_fpn_j2x": (
        "resnet101",
        180000,
        list(range(480, 961, 32)),
        0.02,
        "p5",
        ("42.7", "43.1"),
    ),
    "free_anchor_x101_32x8d_fpn_j1.5x": (
        "resnext101_32x8d",
        135000,
        list(range(640, 801, 32)),
        0.02,
        "p5",
        ("44.2", "44.8"),
    ),
    "free_anchor_x101_32x4d_fpn_1x": ("resnext101_32x4d", 87960, None, 0.01, "c5", ("41.9", "8.1 GB")),
}


@pytest.mark.parametrize("name", sorted(FREE_ANCHOR_ROWS))
def test_free_anchor_configs_match_their_table_rows(name):
    path = Path(__file__).parents[1] / "configs" / f"{name}.yaml"
    backbone, iterations, jitter, prior, p6, figures = FREE_ANCHOR_ROWS[name]
    cfg = load_config(path)
    assert (cfg.model.backbone.name, cfg.train.iterations, cfg.data.scale_jitter) == (
        backbone,
        iterations,
        jitter,
    )
    assert (cfg.model.head.prior_prob, cfg.model.fpn.p6_from, cfg.data.min_size) == (prior, p6, 800)
    assert cfg.data.test.endswith("image_info_test-dev2017.json")
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert all(f in header for f in figures) and "seeds" not in path.read_text()


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
            local = path.name == "free_anchor_x101_32x4d_fpn_1x.yaml"  # torchvision has no 32x4d weights
            expected = (
                cfg.model.backbone.weights.endswith(".pth")
                if local
                else cfg.model.backbone.weights == "imagenet"
            )
            assert expected or cfg.model.init_from, path.name

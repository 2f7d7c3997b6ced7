"""Backbone + FPN: levels, strides, channels; local weights files; the offline ImageNet message."""

from __future__ import annotations

import datetime
import hashlib
import urllib.error
from types import SimpleNamespace

import pytest
import torch
import torchvision

from anchorlab.models import backbone as backbone_module
from anchorlab.models.backbone import BACKBONES, build_backbone, imagenet_weights
from anchorlab.models.hub import WeightsDownloadError


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_large"])
@pytest.mark.parametrize(("min_level", "max_level"), [(3, 7), (2, 6)])
def test_levels_strides_channels(name: str, min_level: int, max_level: int) -> None:
    torch.manual_seed(0)
    model = build_backbone(name, fpn_channels=32, min_level=min_level, max_level=max_level).eval()
    with torch.no_grad():
        features = model(torch.rand(2, 3, 128, 96))
    levels = range(min_level, max_level + 1)
    assert isinstance(features, list)
    assert model.strides == [2**level for level in levels]
    assert model.out_channels == 32
    for feature, level in zip(features, levels, strict=True):
        size = (-(-128 // 2**level), -(-96 // 2**level))  # ceil: stride-2 convs with padding 1
        assert tuple(feature.shape) == (2, 32, *size)
        assert torch.isfinite(feature).all()


def test_min_level_2_uses_c2_and_max_level_below_5_drops_p5() -> None:
    model = build_backbone("resnet18", fpn_channels=16, min_level=2, max_level=4)
    assert model.fpn.inner_blocks[0][0].in_channels == 64  # resnet18's C2 (layer1)
    assert "layer4" not in dict(model.body.named_children())  # C5 is not computed
    assert [f.shape[-1] for f in model(torch.rand(1, 3, 64, 64))] == [16, 8, 4]


def test_p6_is_computed_from_p5() -> None:
    model = build_backbone("resnet18", fpn_channels=16, max_level=7)
    assert model.fpn.extra_blocks.convs[0].in_channels == 16  # P5 (16 channels), not C5 (512)


def test_p6_from_c5_takes_the_last_stage_and_p5_stays_bit_identical() -> None:
    torch.manual_seed(0)
    default = build_backbone("resnet18", fpn_channels=16, max_level=7).eval()
    torch.manual_seed(0)
    p5 = build_backbone("resnet18", fpn_channels=16, max_level=7, p6_from="p5").eval()
    torch.manual_seed(0)
    c5 = build_backbone("resnet18", fpn_channels=16, max_level=7, p6_from="c5").eval()
    assert c5.fpn.extra_blocks.convs[0].in_channels == 512 and c5.fpn.extra_blocks.convs[1].in_channels == 16
    shared = {k: v for k, v in default.state_dict().items() if "extra_blocks.convs.0" not in k}
    c5.load_state_dict(shared, strict=False)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        a, b, c = default(x), p5(x), c5(x)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert all(torch.equal(u, v) for u, v in zip(a[:3], c[:3], strict=True))  # P3-P5 unchanged
    assert c[3].shape == a[3].shape and not torch.allclose(c[3], a[3])
    with torch.no_grad():  # P6 = conv(C5) by hand
        c5_map = c5.body(x)["5"]
        torch.testing.assert_close(c[3], c5.fpn.extra_blocks.convs[0](c5_map))
    with pytest.raises(ValueError, match="p6_from"):
        build_backbone("resnet18", fpn_channels=16, p6_from="c6")


def test_resnext101_32x4d_is_torchvision_resnet_with_32_groups_of_4() -> None:
    model = build_backbone("resnext101_32x4d", fpn_channels=16, max_level=5)
    block = model.body.layer1[0]
    assert block.conv2.groups == 32 and block.conv2.in_channels == 128  # 32 groups x 4 channels
    assert [len(model.body[f"layer{i}"]) for i in (1, 2, 3, 4)] == [3, 4, 23, 3]
    assert model.fpn.inner_blocks[-1][0].in_channels == 2048
    params = sum(p.numel() for p in model.body.parameters())
    assert 41e6 < params < 43e6  # ResNeXt-101 32x4d without its classifier: 42.1M
    with pytest.raises(ValueError, match="no ImageNet weights of resnext101_32x4d"):
        build_backbone("resnext101_32x4d", weights="imagenet")


@pytest.mark.parametrize(
    ("norm", "layer"),
    [
        ("gn", torch.nn.GroupNorm),
        ("frozen_bn", torchvision.ops.FrozenBatchNorm2d),
        ("bn", torch.nn.BatchNorm2d),
    ],
)
def test_norm(norm: str, layer: type) -> None:
    model = build_backbone("resnet18", norm=norm, fpn_channels=16)
    assert isinstance(model.body.bn1, layer)
    if norm == "gn":
        assert model.body.bn1.num_groups == 32


def test_trainable_layers_freezes_the_first_stages() -> None:
    model = build_backbone("resnet18", trainable_layers=2, fpn_channels=16)
    frozen = {n.split(".")[0] for n, p in model.body.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "bn1", "layer1", "layer2"}
    assert all(p.requires_grad for p in model.fpn.parameters())


def test_local_weights_round_trip(tmp_path) -> None:
    torch.manual_seed(1)
    source = torchvision.models.resnet18()  # a torchvision classification checkpoint (with fc.*)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = build_backbone("resnet18", weights=str(path), fpn_channels=16)
    assert torch.equal(model.body.conv1.weight, source.conv1.weight)
    assert torch.equal(model.body.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)

    # the same weights under a prefix (an anchorlab detector checkpoint), wrapped in {"model": ...}
    prefixed = {f"backbone.body.{k}": v for k, v in model.body.state_dict().items()}
    prefixed["head.cls_logits.weight"] = torch.zeros(3)
    prefixed["head._extra_state"] = {"normalizer": {"value": 12.0, "momentum": 0.9}}
    checkpoint = {"model": prefixed, "iteration": 7, "rng": {"torch": torch.get_rng_state()}}
    torch.save(checkpoint, tmp_path / "ckpt.pth")
    again = build_backbone("resnet18", weights=tmp_path / "ckpt.pth", norm="frozen_bn", fpn_channels=16)
    assert torch.equal(again.body.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
    assert torch.equal(again.body.bn1.running_mean, source.bn1.running_mean)


def test_mobilenet_local_weights(tmp_path) -> None:
    source = torchvision.models.mobilenet_v3_large()
    torch.save(source.state_dict(), tmp_path / "mnv3.pth")
    model = build_backbone("mobilenet_v3_large", weights=tmp_path / "mnv3.pth", fpn_channels=16)
    assert torch.equal(model.body["16"][0].weight, source.features[16][0].weight)


def test_wrong_weights_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_backbone("resnet18", weights=tmp_path / "missing.pth")
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match=r"unexpected keys .*layer1\.2\."):
        build_backbone("resnet18", weights=tmp_path / "r34.pth")
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="missing keys"):
        build_backbone("resnet18", weights=tmp_path / "r18.pth", norm="gn")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        build_backbone("resnet18", weights=tmp_path / "list.pth")
    # a file that needs another pickled object (here a datetime; code in general) is refused, never run
    torch.save({"model": {}, "when": datetime.datetime(2026, 1, 1)}, tmp_path / "unsafe.pth")
    with pytest.raises(ValueError, match=r"refused: it needs the pickled object .*weights_only=True"):
        build_backbone("resnet18", weights=tmp_path / "unsafe.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="is not readable"):
        build_backbone("resnet18", weights=tmp_path / "text.pth")


def test_imagenet_offline_is_one_line_naming_the_cache_file(monkeypatch, tmp_path) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no internet")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    for choice, file in (("imagenet", "resnet50-11ad3fa6.pth"), ("imagenet_v1", "resnet50-0676ba61.pth")):
        with pytest.raises(WeightsDownloadError) as err:
            build_backbone("resnet50", weights=choice)
        msg = str(err.value)
        assert "\n" not in msg and "no internet" in msg
        assert f"place it in {tmp_path / 'torch' / 'hub' / 'checkpoints'} as {file}" in msg


def test_imagenet_from_the_hub_cache_is_verified_and_loaded(monkeypatch, tmp_path) -> None:
    """A file placed by hand in the hub cache: right checksum -> loaded; wrong -> one-line error."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(3)
    source = torchvision.models.resnet18()
    data = folder / "tmp.pth"
    torch.save(source.state_dict(), data)
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    url = f"https://example.invalid/resnet18-{digest[:8]}.pth"
    data.rename(folder / f"resnet18-{digest[:8]}.pth")
    fake = SimpleNamespace(url=url)
    monkeypatch.setattr(backbone_module, "imagenet_weights", lambda name, choice: fake)
    model = build_backbone("resnet18", weights="imagenet", norm="frozen_bn", fpn_channels=16)
    assert torch.equal(model.body.conv1.weight, source.conv1.weight)
    # identical features to torchvision's resnet with the same state dict (frozen BN = eval-mode BN)
    x = torch.rand(1, 3, 64, 64)
    feats = model.body(x)
    net = source.eval()
    with torch.no_grad():
        c2 = net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))
        c3 = net.layer2(c2)
        c4 = net.layer3(c3)
        ref = {"3": c3, "4": c4, "5": net.layer4(c4)}
    for key in ("3", "4", "5"):
        torch.testing.assert_close(feats[key], ref[key], rtol=1e-5, atol=1e-5)

    (folder / f"resnet18-{digest[:8]}.pth").write_bytes(b"truncated")
    with pytest.raises(WeightsDownloadError, match="does not match the SHA-256 prefix"):
        build_backbone("resnet18", weights="imagenet")


def test_imagenet_weights_enum_for_every_backbone() -> None:
    for name in BACKBONES:
        if name == "resnext101_32x4d":  # built from torchvision's ResNet class: no published weights
            with pytest.raises(ValueError, match="no imagenet weights"):
                imagenet_weights(name, "imagenet")
            continue
        assert imagenet_weights(name, "imagenet").url.endswith(".pth")
        assert imagenet_weights(name, "imagenet_v1").name == "IMAGENET1K_V1"
    assert imagenet_weights("resnet50", "imagenet").name == "IMAGENET1K_V2"


def test_unknown_backbone() -> None:
    with pytest.raises(ValueError, match="available: resnet18"):
        build_backbone("vgg16")


def test_mobilenet_batchnorm_keeps_up_with_short_from_scratch_runs() -> None:
    """torchvision's MobileNetV3 BN momentum 0.01 left the running statistics ~100 steps behind the
    weights on the quick schedules (val AP50 collapsed); anchorlab uses torch's default 0.1."""
    net = build_backbone("mobilenet_v3_large", norm="bn", fpn_channels=16, min_level=3, max_level=5)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.1 and m.eps == 0.001 for m in bns)

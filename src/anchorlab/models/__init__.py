"""Models: torchvision backbones + FPN, detection heads, the generic ``Detector`` and ``build_detector``."""

from anchorlab.models.backbone import build_backbone
from anchorlab.models.build import DETECTORS, build_detector
from anchorlab.models.detector import Detector
from anchorlab.models.heads.retina import RetinaHead

__all__ = ["DETECTORS", "Detector", "RetinaHead", "build_backbone", "build_detector"]

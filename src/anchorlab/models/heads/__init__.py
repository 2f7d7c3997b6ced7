"""Detection heads. Each returns raw outputs and owns its loss and post-processing (see ``Detector``)."""

from anchorlab.models.heads.retina import RetinaHead, flatten_levels

__all__ = ["RetinaHead", "flatten_levels"]

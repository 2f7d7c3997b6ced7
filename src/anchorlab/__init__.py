"""anchorlab: anchor-based and anchor-free object detection, side by side."""

__version__ = "0.1.0"

"""The coco_stuff10k dataset builder."""

from data.coco_stuff10k.builder import Builder

__all__ = ["Builder"]

"""The coco_stuff164k dataset builder."""

from data.coco_stuff164k.builder import Builder

__all__ = ["Builder"]

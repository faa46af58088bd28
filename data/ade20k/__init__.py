"""The ade20k dataset builder."""

from data.ade20k.builder import Builder

__all__ = ["Builder"]

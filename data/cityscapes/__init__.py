"""The cityscapes dataset builder."""

from data.cityscapes.builder import Builder

__all__ = ["Builder"]

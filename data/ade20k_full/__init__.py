"""The ade20k_full dataset builder."""

from data.ade20k_full.builder import Builder

__all__ = ["Builder"]

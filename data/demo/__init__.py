"""The protoseg_demo dataset (procedural, no download)."""

from data.demo.builder import Builder

__all__ = ["Builder"]

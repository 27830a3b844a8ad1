"""UHarmony engine: harmonized multi-site lesion segmentation, without Slicer or Qt."""

__version__ = "0.1.0"

"""Data: the MNI template shipped by nilearn, and synthetic multi-site lesion cases built on it."""

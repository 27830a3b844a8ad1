"""Data: dataset manifests, the training plan, case loading, synthetic multi-site cases on the MNI template."""

"""Slide reading, resolution handling, tissue detection, nested multi-magnification grids and feature extraction."""

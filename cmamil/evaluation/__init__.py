"""Scoring and looking at trained models: metrics, figures, run reports, evaluation on new data, saliency.

`metrics` (scikit-learn definitions), `figures` (matplotlib), `report` (a run's table and figures), `evaluate`
(any run's checkpoints on new labelled data), `inspection` and `saliency` (overlays and embeddings of patch
models), `speed` (latency, throughput and memory).
"""

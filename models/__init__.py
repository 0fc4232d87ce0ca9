"""Rapid Adapt's ML core: networks, task families, the inner loop, meta-training,
evaluation and the registry of committed bases. Imports torch, numpy and pillow only."""

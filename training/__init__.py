"""Duet training: LiT alignment, the paper's joint sparse-dense self-distillation, and baselines.

Imports only ``core`` from this project.
"""

"""Algorithms that run on prepared models (calibration; PTQ recovery lands here too)."""

from .calibrate import batch_to_args, calibrate, model_device

__all__ = ["calibrate", "batch_to_args", "model_device"]

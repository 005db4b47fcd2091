"""Algorithms that run on models: calibration and PTQ accuracy recovery."""

from .adaround import adaround
from .bias_correction import bias_correction
from .bn_fold import fold_bn, get_bn_fold_report
from .calibrate import calibrate, model_device
from .cle import Relu6Policy, equalize, get_cle_report
from .reconstruct import reconstruct

__all__ = [
    "calibrate",
    "model_device",
    "fold_bn",
    "get_bn_fold_report",
    "equalize",
    "get_cle_report",
    "Relu6Policy",
    "bias_correction",
    "adaround",
    "reconstruct",
]

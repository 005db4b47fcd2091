"""Backend profiles (dtypes, symmetry, granularity, placement) as data."""

from .profiles import (
    ORT_KERNELS,
    PROFILES,
    BackendProfile,
    FusedKernel,
    KernelOp,
    Placement,
    get_profile,
)

__all__ = [
    "BackendProfile",
    "Placement",
    "PROFILES",
    "get_profile",
    "KernelOp",
    "FusedKernel",
    "ORT_KERNELS",
]

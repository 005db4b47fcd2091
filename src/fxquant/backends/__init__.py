"""Backend profiles (dtypes, symmetry, granularity, placement) as data."""

from .profiles import (
    ORT_EXACT_IN_FLOAT,
    ORT_KERNELS,
    PROFILES,
    RUNTIME_KERNELS,
    BackendProfile,
    FusedKernel,
    KernelOp,
    Placement,
    Runtime,
    get_profile,
)

__all__ = [
    "BackendProfile",
    "Placement",
    "Runtime",
    "PROFILES",
    "get_profile",
    "KernelOp",
    "FusedKernel",
    "ORT_KERNELS",
    "ORT_EXACT_IN_FLOAT",
    "RUNTIME_KERNELS",
]

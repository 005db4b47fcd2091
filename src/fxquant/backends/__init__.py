"""Backend profiles (dtypes, symmetry, granularity, placement) as data."""

from .profiles import (
    LITERT_KERNELS,
    ORT_EXACT_IN_FLOAT,
    ORT_KERNELS,
    PROFILES,
    RUNTIME_KERNELS,
    BackendProfile,
    FixedOutput,
    FusedKernel,
    KernelOp,
    Placement,
    Runtime,
    get_profile,
    op_type_key,
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
    "LITERT_KERNELS",
    "FixedOutput",
    "op_type_key",
]

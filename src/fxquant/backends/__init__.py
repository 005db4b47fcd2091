"""Backend profiles (dtypes, symmetry, granularity, placement) as data."""

from .profiles import PROFILES, BackendProfile, Placement, Runtime, get_profile

__all__ = ["BackendProfile", "Placement", "Runtime", "PROFILES", "get_profile"]

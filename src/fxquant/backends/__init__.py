"""Backend profiles (dtypes, symmetry, granularity, placement) as data."""

from .profiles import PROFILES, BackendProfile, Placement, get_profile

__all__ = ["BackendProfile", "Placement", "PROFILES", "get_profile"]

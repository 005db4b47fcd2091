"""Backend profiles (dtypes, symmetry, granularity, placement) as data."""

from .profiles import PROFILES, BackendProfile, FixedOutput, Placement, get_profile, op_type_key

__all__ = ["BackendProfile", "Placement", "FixedOutput", "PROFILES", "get_profile", "op_type_key"]

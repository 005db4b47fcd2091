"""AIMET's quantsim config: read (:mod:`.config`) and written
(:func:`fxquant.export_quantsim_config`)."""

from ...export import export_quantsim_config
from .config import DEFAULT_CONFIG, AimetConfig, read_config

__all__ = ["DEFAULT_CONFIG", "AimetConfig", "read_config", "export_quantsim_config"]

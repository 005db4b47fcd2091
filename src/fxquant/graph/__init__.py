"""Graph capture, op patterns, placement and ``prepare``."""

from .capture import Island, RootTraceError
from .prepare import as_input_tuple, prepare
from .report import OpRecord, PrepareOptions, PrepareReport, get_report
from .simulate import RuntimePlan, Simulation, float_simulation, runtime_plan, simulation

__all__ = [
    "prepare",
    "as_input_tuple",
    "Island",
    "RootTraceError",
    "OpRecord",
    "PrepareOptions",
    "PrepareReport",
    "get_report",
    "Simulation",
    "RuntimePlan",
    "simulation",
    "float_simulation",
    "runtime_plan",
]

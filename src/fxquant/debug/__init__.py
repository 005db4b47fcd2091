"""Inspection and debugging tools."""

from .summary import FloatRow, QuantizerRow, Summary, summary

__all__ = ["summary", "Summary", "QuantizerRow", "FloatRow"]

from .compare import CompareRow, CompareTable, OutputRow, compare
from .mixed_precision import (
    MixedPrecisionQconfigSetter,
    SearchPoint,
    SearchReport,
    search_mixed_precision,
)
from .report import report
from .sensitivity import SensitivityRow, SensitivityTable, load_table, sensitivity

__all__ += [
    "compare",
    "CompareTable",
    "CompareRow",
    "OutputRow",
    "sensitivity",
    "SensitivityTable",
    "SensitivityRow",
    "load_table",
    "report",
    "search_mixed_precision",
    "SearchReport",
    "SearchPoint",
    "MixedPrecisionQconfigSetter",
]

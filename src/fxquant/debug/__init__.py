"""Inspection and debugging tools."""

from .summary import FloatRow, QuantizerRow, Summary, summary

__all__ = ["summary", "Summary", "QuantizerRow", "FloatRow"]

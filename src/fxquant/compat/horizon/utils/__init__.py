"""``horizon_plugin_pytorch.utils``: :mod:`.quant_profiler` (sensitivity tables)."""

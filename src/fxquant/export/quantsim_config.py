"""AIMET's quantsim configuration JSON that matches a prepared model's encodings.

AIMET builds its quantizers from this config (symmetry, per-channel weights, which op types
quantize their outputs, op groups fused as one) and its strict encodings loader refuses an
encoding whose symmetry differs from the quantizer's ("symmetric: False, loaded encoding
symmetric: True").  :func:`export_quantsim_config` writes the config that describes fxquant's
quantizers, derived from the same values :func:`~fxquant.export_encodings` writes:

* ``defaults.ops.is_symmetric``: the symmetry of most activation encodings; op types whose
  outputs all have the other symmetry get an ``op_type`` entry;
* ``defaults.params``: weights quantized, symmetric if all weight encodings are;
  ``per_channel_quantization`` if any weight is per channel; ``strict_symmetric`` if the
  symmetric quantizers all use the narrow range (``[-127, 127]``; AIMET has one switch for
  weights and activations, so the ``tensorrt`` profile's narrow weights next to full-range
  activations cannot be described); ``unsigned_symmetric`` is False
  (fxquant's symmetric activations stay on the signed grid, offset ``-2^(bw-1)``);
* ``params.bias``: not quantized (fxquant's encodings hold no bias);
* ``op_type``: with ``onnx_path``, every ONNX op type none of whose outputs has an encoding
  gets ``is_output_quantized: False``;
* ``supergroups``: the op sequences fxquant quantizes only at the end (conv / gemm /
  matmul / add followed by relu or clip);
* ``model_input``: quantized when a graph input has an encoding; ``model_output``: ``{}``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

from torch import nn

from ..fake_quant import FakeQuantize
from .atomic import write_bytes_atomic
from .encodings import export_encodings

__all__ = ["export_quantsim_config", "SUPERGROUPS"]

SUPERGROUPS: tuple[tuple[str, ...], ...] = (
    ("Conv", "Relu"), ("Conv", "Clip"), ("ConvTranspose", "Relu"), ("Gemm", "Relu"),
    ("MatMul", "Relu"), ("Add", "Relu"),
)
"""ONNX op sequences fxquant fuses (no quantizer between them)."""


def _flag(v: bool) -> str:
    return "True" if v else "False"


def _sym(entries: list[dict[str, Any]]) -> bool:
    return str(entries[0]["is_symmetric"]) == "True"


def export_quantsim_config(
    qmodel: nn.Module,
    path: str | os.PathLike | None,
    onnx_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write (and return) the AIMET quantsim config matching ``qmodel``'s encodings.

    Args:
        qmodel: a calibrated model from :func:`fxquant.prepare`.
        path: output JSON (written atomically); ``None`` only returns the dict.
        onnx_path: the float or QDQ ONNX file exported from ``qmodel``: op types come from it
            (``op_type`` entries and ``model_input``).

    Load it with AIMET next to the encodings, e.g. ``aimet_onnx``'s
    ``QuantizationSimModel(onnx_model, config_file=path)`` then ``load_encodings_to_sim``.
    """
    enc = export_encodings(qmodel, None, onnx_path=onnx_path)
    acts: dict[str, list[dict[str, Any]]] = enc["activation_encodings"]
    params: dict[str, list[dict[str, Any]]] = enc["param_encodings"]
    act_sym = Counter(_sym(e) for e in acts.values())
    default_sym = act_sym.most_common(1)[0][0] if act_sym else False
    quantizers = [m for m in qmodel.modules() if isinstance(m, FakeQuantize)]
    weight_quantizers = [q for q in quantizers if q.is_weight]
    symmetric = [q for q in quantizers if q.symmetric]
    config: dict[str, Any] = {
        "defaults": {
            "ops": {"is_output_quantized": "True", "is_symmetric": _flag(default_sym)},
            "params": {
                "is_quantized": "True",
                "is_symmetric": _flag(all(_sym(e) for e in params.values())),
            },
            "strict_symmetric": _flag(bool(symmetric)
                                      and all(q.dtype.narrow_range for q in symmetric)),
            "unsigned_symmetric": "False",
            "per_channel_quantization": _flag(any(q.ch_axis is not None
                                                  for q in weight_quantizers)),
        },
        "params": {"bias": {"is_quantized": "False"}},
        "op_type": {},
        "supergroups": [{"op_list": list(g)} for g in SUPERGROUPS],
        "model_input": {"is_input_quantized": "False"},
        "model_output": {},
    }
    if onnx_path is not None:
        _op_types(config, acts, default_sym, onnx_path)
    if path is not None:
        text = json.dumps(config, indent=2, sort_keys=True) + "\n"
        write_bytes_atomic(path, text.encode("utf-8"))
    return config


def _op_types(config: dict[str, Any], acts: dict[str, list[dict[str, Any]]],
              default_sym: bool, onnx_path: str | os.PathLike) -> None:
    import onnx

    graph = onnx.load(os.fspath(onnx_path), load_external_data=False).graph
    by_type: dict[str, list[bool | None]] = {}
    for node in graph.node:
        syms = by_type.setdefault(node.op_type, [])
        syms.extend(_sym(acts[o]) if o in acts else None for o in node.output)
    for op_type, syms in sorted(by_type.items()):
        encoded = [s for s in syms if s is not None]
        if not encoded:
            config["op_type"][op_type] = {"is_output_quantized": "False"}
        elif all(s != default_sym for s in encoded):
            config["op_type"][op_type] = {"is_symmetric": _flag(not default_sym)}
    if any(i.name in acts for i in graph.input):
        config["model_input"]["is_input_quantized"] = "True"

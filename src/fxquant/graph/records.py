"""The one record prepare keeps per node of a graph (filled stage by stage, see
:mod:`fxquant.graph.stages`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx
from torch import nn

from ..qconfig import OpKind, QConfig

__all__ = ["NodeRecord"]


@dataclass
class NodeRecord:
    """What prepare knows about one placeholder / op node.

    Attributes:
        node: the node.
        name: its local name in this graph (:func:`fxquant.graph.naming.assign_names`).
        shown: the name users see (differs from ``name`` inside eagerly captured units).
        op_type: module class name or function / method name.
        module: the called module (``call_module`` nodes), else ``None``.
        kind: its :class:`OpKind` (``classify_ops``).
        reason: why it stays float, when known before planning.
        qconfig: what the setters decided (``resolve_qconfigs``; ``None``: no opinion).
    """

    node: fx.Node
    name: str
    shown: str
    op_type: str
    module: nn.Module | None = None
    kind: OpKind = OpKind.FLOAT
    reason: str | None = None
    qconfig: QConfig | None = None

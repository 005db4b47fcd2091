"""Block reconstruction (BRECQ, Li et al. 2021) with QDrop (Wei et al. 2022).

The graph is cut into blocks (:func:`fxquant.algorithms.blocks.find_blocks`: residual blocks,
transformer layers, otherwise single layers).  Block by block, in graph order:

1. cache, for a subset of the calibration examples, the block's inputs as the *quantized* model
   computes them (earlier blocks already rounded), the same inputs in the *float* model, and the
   block's float outputs;
2. run the block as its own small ``GraphModule`` (sharing the model's modules) with every
   weight quantizer replaced by an :class:`~fxquant.algorithms.adaround.AdaRoundQuantizer`, and
   learn all rounding variables of the block jointly (Adam) to reconstruct the float outputs.
   **QDrop**: at every step each activation quantizer inside the block, and the block input,
   passes each element through unquantized with probability ``drop_prob`` (the float input is
   used for the block input), which flattens the loss landscape the rounding is fit to;
3. freeze the learned codes into the weights exactly as :func:`fxquant.algorithms.adaround`
   does.

Layers that no block covers (e.g. inside a float island) get layer-wise AdaRound afterwards.
``granularity="layer"`` is :func:`~fxquant.algorithms.adaround` itself.
"""

from __future__ import annotations

import enum
import time
import warnings
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from ..errors import ConfigError
from ..fake_quant import FakeQuantize
from ..graph.report import check_prepared
from ..modelio import ModelInputs, call_model
from . import adaround_math as am
from .adaround import (
    REPORT_ATTR,
    AdaRoundOptions,
    AdaRoundQuantizer,
    ReconstructionReport,
    ReconstructionResult,
    adaround,
    adaround_layers,
    adaroundable_layers,
    float_copy,
    freeze_rounding,
    optimize_rounding,
    quantized_weight_and_bias,
    working_mode,
)
from .adaround_data import materialize
from .blocks import Block, find_blocks

__all__ = ["reconstruct", "ReconstructGranularity"]

_CACHE_BYTES = 512 * 2**20  # bound on one block's cached inputs + targets

DEFAULT_ITERATIONS = 500
"""Adam steps per block by default, with :data:`DEFAULT_LR`: fewer, larger steps.  On the
benchmark's three CNNs at W4A4 (MSE activation ranges) 500 steps at 4e-3 reached the accuracy of
2000 steps at AdaRound's 1e-3 (plain 99.56 / 99.56, residual 93.35 / 93.40, depthwise 90.50 /
90.50 %) in a quarter of the time: under a minute per model on one core."""
DEFAULT_LR = 4e-3
"""Adam learning rate of the rounding logits with the default iteration count."""
ADAROUND_LR = AdaRoundOptions.lr
"""AdaRound's learning rate (1e-3): blocks with an explicit iteration count, single layers."""


class ReconstructGranularity(enum.Enum):
    """What :func:`reconstruct` optimises jointly.

    BLOCK: all layers of a block (residual block / transformer layer) together.
    LAYER: one layer at a time (plain AdaRound).
    """

    BLOCK = "block"
    LAYER = "layer"


# -- running a block on its own ----------------------------------------------------------------
def _subgraph_module(gm: fx.GraphModule, names: list[str], outputs: list[str],
                     inputs: list[str]) -> fx.GraphModule:
    """A GraphModule over ``gm``'s modules computing nodes ``outputs`` from nodes ``inputs``.

    ``names`` are the nodes to copy (graph order); ``get_attr`` nodes are copied as needed.
    """
    by_name = {n.name: n for n in gm.graph.nodes}
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for name in inputs:
        env[by_name[name]] = graph.placeholder(name)

    def arg(n: fx.Node) -> fx.Node:
        if n not in env:
            if n.op != "get_attr":
                raise RuntimeError(f"block reads {n.name!r}, which is neither input nor inside")
            env[n] = graph.node_copy(n)
        return env[n]

    for name in names:
        env[by_name[name]] = graph.node_copy(by_name[name], arg)
    graph.output(tuple(env[by_name[o]] for o in outputs))
    return fx.GraphModule(gm, graph)


def _capture_module(gm: fx.GraphModule, names: list[str]) -> fx.GraphModule:
    """``gm`` returning the values of nodes ``names`` (as a tuple); the rest is pruned."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    graph.graph_copy(gm.graph, env)  # copies everything but the output node
    by_name = {n.name: n for n in gm.graph.nodes}
    graph.output(tuple(env[by_name[n]] for n in names))
    cap = fx.GraphModule(gm, graph)
    cap.graph.eliminate_dead_code()  # also stops the forward right after the last needed node
    cap.recompile()
    return cap


# -- caching ------------------------------------------------------------------------------------
class _BlockCache:
    """One block's cached examples.

    ``q_in`` / ``f_in``: its inputs in the quantized / float model, batched tensors
    concatenated over the kept examples (``batched_in``), anything else (a mask, a shape) taken
    from the first batch.  ``target``: the float outputs, None for outputs that are not batched
    float tensors (they are not reconstructed).
    """

    def __init__(self) -> None:
        self.q_in: list[Any] = []
        self.f_in: list[Any] = []
        self.target: list[Tensor | None] = []
        self.batched_in: list[bool] = []
        self.n = 0


def _batched(v: Any, n: int) -> bool:
    return isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n


def _build_cache(
    qcap: fx.GraphModule, fcap: fx.GraphModule, n_in: int, batches: list[ModelInputs],
    gen: torch.Generator,
) -> _BlockCache:
    """Run both capture modules on ``batches``; keep a random subset of the examples that
    fits the memory budget (drawn from every batch in proportion to its size)."""
    n_total = sum(b.batch_size() for b in batches)
    q_chunks: list[list[Any]] = []
    f_chunks: list[list[Any]] = []
    cache = _BlockCache()
    keep, flags = 0, []
    with torch.no_grad():
        for inputs in batches:
            n = inputs.batch_size()
            q_vals, f_vals = list(call_model(qcap, inputs)), list(call_model(fcap, inputs))
            if not flags:  # sizes and kinds from the first batch
                flags = [_batched(v, n) for v in q_vals]
                per_example = sum(t[0].numel() * t.element_size()
                                  for t in (*q_vals, *f_vals) if _batched(t, n))
                keep = max(1, min(n_total, _CACHE_BYTES // max(1, per_example)))
            share = max(1, round(keep * n / n_total))
            idx = None if share >= n else torch.randperm(n, generator=gen)[:share]
            q_chunks.append([_select(v, idx, n) for v in q_vals])
            f_chunks.append([_select(v, idx, n) for v in f_vals])
            cache.n += n if idx is None else idx.numel()
    for pos, flag in enumerate(flags):
        q_vals = [c[pos] for c in q_chunks]
        f_vals = [c[pos] for c in f_chunks]
        cache.batched_in.append(flag)
        cache.q_in.append(torch.cat(q_vals) if flag else q_vals[0])
        cache.f_in.append(torch.cat(f_vals) if flag else f_vals[0])
    for pos in range(n_in, len(f_chunks[0])):
        vals = [c[pos] for c in f_chunks]
        ok = all(isinstance(v, Tensor) and v.is_floating_point() and v.dim() > 0 for v in vals)
        cache.target.append(torch.cat(vals) if ok and sum(v.shape[0] for v in vals) == cache.n
                            else None)
    return cache


def _select(v: Any, idx: Tensor | None, n: int) -> Any:
    if idx is None or not (isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n):
        return v
    return v.index_select(0, idx.to(v.device))


# -- QDrop ------------------------------------------------------------------------------------
def _keep_float_mask(x: Tensor, prob: float, gen: torch.Generator) -> Tensor:
    """Boolean mask, True with probability ``prob`` (in steps of 1/256) per element of ``x``.

    Built from random bytes (8 per generated int64), about 4x cheaper than ``torch.rand``.
    Callers blend with ``torch.lerp(quantized, float, mask)``: exact for a 0/1 mask and 3x
    cheaper than ``torch.where`` forward + backward on CPU.
    """
    if prob >= 1.0 or prob <= 0.0:
        return torch.full(x.shape, prob >= 1.0, dtype=torch.bool, device=x.device)
    numel = x.numel()
    words = torch.empty((numel + 7) // 8, dtype=torch.int64).random_(-(2**63), None,
                                                                      generator=gen)
    mask = words.view(torch.uint8)[:numel].reshape(x.shape) < round(prob * 256)
    return mask.to(x.device)


def _qdrop_hook(prob: float, gen: torch.Generator):
    """Forward hook for an activation quantizer: each element keeps its float value w.p. prob."""

    def hook(mod: nn.Module, args: tuple, out: Any) -> Any:
        x = args[0]
        if not (isinstance(x, Tensor) and x.is_floating_point()):
            return out
        return torch.lerp(out, x, _keep_float_mask(x, prob, gen).to(x.dtype))

    return hook


def _mix(q: Any, f: Any, prob: float, gen: torch.Generator) -> Any:
    if prob <= 0 or not (isinstance(q, Tensor) and q.is_floating_point()):
        return q
    return torch.lerp(q, f, _keep_float_mask(q, prob, gen).to(q.dtype))


def _index_batches(n: int, bs: int, gen: torch.Generator, device: torch.device):
    """Endless mini-batches of example indices, a fresh permutation every epoch."""
    while True:
        order = torch.randperm(n, generator=gen).to(device)
        for i in range(0, n - bs + 1, bs):
            yield order[i : i + bs]


def _channel_axis(gm: fx.GraphModule, block: Block) -> int:
    last = gm.get_submodule(block.layers[-1]) if block.layers else None
    return -1 if isinstance(last, nn.Linear) else 1


# -- one block --------------------------------------------------------------------------------
def _reconstruct_block(
    qmodel: fx.GraphModule, fmodel: fx.GraphModule, block: Block, layers: list[str],
    batches: list[ModelInputs], opts: AdaRoundOptions, drop_prob: float, gen: torch.Generator,
) -> ReconstructionResult | None:
    t0 = time.perf_counter()
    inputs, outputs = list(block.inputs), list(block.outputs)
    sub = _subgraph_module(qmodel, list(block.nodes), outputs, inputs)
    qcap = _capture_module(qmodel, inputs)
    fcap = _capture_module(fmodel, inputs + outputs)
    cache = _build_cache(qcap, fcap, len(inputs), batches, gen)
    if all(t is None for t in cache.target):
        return None  # nothing to reconstruct: the caller rounds these layers one by one
    axis = _channel_axis(qmodel, block)
    modules = {name: qmodel.get_submodule(name) for name in layers}
    adas = {
        name: AdaRoundQuantizer(m.weight_fake_quant, quantized_weight_and_bias(m)[0]).to(
            m.weight.device)
        for name, m in modules.items()
    }
    quantizers = {
        str(n.target) for n in qmodel.graph.nodes
        if n.name in set(block.nodes) and n.op == "call_module"
        and isinstance(qmodel.get_submodule(str(n.target)), FakeQuantize)
    }
    n = cache.n
    bs = max(1, min(opts.batch_size, n))
    dev = next(t.device for t in cache.target if t is not None)

    def run(idx: Tensor | None, prob: float) -> list[Tensor]:
        args = []
        for q, f, batched in zip(cache.q_in, cache.f_in, cache.batched_in, strict=True):
            if batched and idx is not None:
                q, f = q.index_select(0, idx), f.index_select(0, idx)
            args.append(_mix(q, f, prob, gen))
        return list(sub(*args))

    def mse() -> float:
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, min(n, 256), bs):
                idx = torch.arange(start, min(n, start + bs), device=dev)
                for out, tgt in zip(run(idx, 0.0), cache.target, strict=True):
                    if tgt is not None:
                        total += float((out - tgt.index_select(0, idx)).square().sum())
                        count += out.numel()
        return total / max(1, count)

    before = mse()
    saved = {name: m.weight_fake_quant for name, m in modules.items()}
    iters = DEFAULT_ITERATIONS if opts.num_iterations is None else opts.num_iterations
    handles = []
    try:
        for name, m in modules.items():
            m.weight_fake_quant = adas[name]
        for path in quantizers:
            if drop_prob > 0:
                hook = _qdrop_hook(drop_prob, gen)
                handles.append(qmodel.get_submodule(path).register_forward_hook(hook))
        stream = _index_batches(n, bs, gen, dev)

        def loss_fn() -> Tensor:
            idx = next(stream)
            outs = run(idx, drop_prob)
            return sum(
                am.reconstruction_loss(o, t.index_select(0, idx), axis)
                for o, t in zip(outs, cache.target, strict=True) if t is not None
            )

        desc = f"reconstruct {block.prefix or block.layers[0]}"
        optimize_rounding(list(adas.values()), loss_fn, iters, opts, desc)
        for h in handles:
            h.remove()
        handles = []
        for a in adas.values():
            a.hard = True
        after = mse()
    finally:
        for h in handles:
            h.remove()
        for name, m in modules.items():
            m.weight_fake_quant = saved[name]
    keep_nearest = after > before
    for name, m in modules.items():
        ada = adas[name]
        freeze_rounding(m, ada.nearest_codes if keep_nearest else ada.codes())
    unit = block.prefix or ", ".join(layers)
    return ReconstructionResult(
        unit, tuple(layers), iters, time.perf_counter() - t0, n, before, after, keep_nearest)


def reconstruct(
    qmodel: nn.Module,
    data: Iterable[Any],
    *,
    granularity: ReconstructGranularity | str = ReconstructGranularity.BLOCK,
    drop_prob: float = 0.5,
    num_iterations: int | None = None,
    reg_param: float = 0.01,
    beta_range: tuple[float, float] = (20, 2),
    warm_start: float = 0.2,
    lr: float | None = None,
    batch_size: int = 32,
    num_batches: int | None = None,
    progress: bool = True,
    seed: int = 0,
    num_threads: int | None = 1,
) -> nn.Module:
    """Block reconstruction with QDrop (BRECQ + QDrop) of a calibrated prepared model.

    Args:
        qmodel: a model from :func:`fxquant.prepare`, calibrated.
        data: calibration batches (read once, up to ``num_batches``).
        granularity: ``"block"`` (see :func:`~fxquant.algorithms.blocks.find_blocks`) or
            ``"layer"`` (plain :func:`~fxquant.algorithms.adaround`; ``drop_prob`` unused).
        drop_prob: QDrop probability of leaving an activation element unquantized during the
            optimisation (0: BRECQ).
        num_iterations: Adam steps per block; ``None``: :data:`DEFAULT_ITERATIONS` (500).
            Layers that no block covers get AdaRound's own default.
        reg_param, beta_range, warm_start: as for :func:`~fxquant.algorithms.adaround`.
        lr: Adam learning rate; ``None``: :data:`DEFAULT_LR` (4e-3) for blocks with the default
            iteration count, else AdaRound's 1e-3 (also for layers optimised one by one).
        batch_size: examples per step (for blocks; layers keep AdaRound's row batches).
        progress: show progress bars.
        seed: seeds example sampling and the QDrop masks (same seed, same weights).
        num_threads: torch intra-op threads while optimising a block (restored afterwards;
            None: torch's setting).  One step works on a small batch: on 2 cores one thread is
            the fastest (a second one gains little on an idle machine and costs several times
            that on a busy one); layers optimised one by one always use one thread, as in
            ``adaround``.

    Returns ``qmodel`` (changed in place; weights frozen to their learned codes) with a
    :class:`~fxquant.algorithms.adaround.ReconstructionReport` in
    ``qmodel.reconstruction_report``.
    """
    check_prepared(qmodel, "reconstruct")
    granularity = ReconstructGranularity(granularity)
    if not 0.0 <= drop_prob <= 1.0:
        raise ConfigError(f"drop_prob must be in [0, 1], got {drop_prob}")
    layer_lr = ADAROUND_LR if lr is None else lr
    block_lr = (DEFAULT_LR if num_iterations is None else ADAROUND_LR) if lr is None else lr
    common = dict(num_iterations=num_iterations, reg_param=reg_param, beta_range=beta_range,
                  warm_start=warm_start, progress=progress, seed=seed)
    opts = AdaRoundOptions(batch_size=batch_size, num_threads=num_threads, lr=block_lr, **common)
    if granularity is ReconstructGranularity.LAYER:
        return adaround(qmodel, data, num_batches=num_batches, lr=layer_lr, **common)
    if not isinstance(qmodel, fx.GraphModule):
        warnings.warn(
            "reconstruct: the model has no fx graph (its forward could not be traced); "
            "falling back to layer-wise AdaRound", stacklevel=2,
        )
        return adaround(qmodel, data, num_batches=num_batches, lr=layer_lr, **common)
    t0 = time.perf_counter()
    batches = materialize(qmodel, data, num_batches)
    report = ReconstructionReport(f"reconstruct (block, drop_prob={drop_prob})")
    with working_mode(qmodel):
        fmodel = float_copy(qmodel)
        todo = set(adaroundable_layers(qmodel))
        blocks = find_blocks(qmodel)
        for i, block in enumerate(blocks):
            layers = [name for name in block.layers if name in todo]
            if layers:
                result = _reconstruct_block(
                    qmodel, fmodel, block, layers, batches, opts, drop_prob, opts.generator(i)
                )
                if result is not None:
                    report.results.append(result)
                    todo.difference_update(layers)
        rest = [name for name in adaroundable_layers(qmodel) if name in todo]
        if rest:  # layers no block reaches (inside float islands, reused ...): one by one
            adaround_layers(qmodel, fmodel, rest, batches, AdaRoundOptions(lr=layer_lr, **common),
                            report,
                            first_unit=len(blocks))
    report.seconds = time.perf_counter() - t0
    setattr(qmodel, REPORT_ATTR, report)
    return qmodel

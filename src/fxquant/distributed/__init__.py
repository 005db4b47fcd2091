"""Distributed calibration and QAT (torch.distributed: DDP / torchrun, NCCL or gloo).

With ``torch.distributed`` initialised and more than one rank, fxquant keeps quantization state
identical on every rank, whatever DDP does with buffers:

* activation observers merge their statistics across ranks (:mod:`.observers`): calibrating
  over a ``DistributedSampler`` gives the qparams of one process over the union of the data
  (bit for bit for min-max and histogram methods), and in QAT every observation is reduced
  before it is used, so scales never differ between ranks;
* ``ConvBn`` modules normalise with the statistics of the global batch in training
  (:mod:`.batchnorm`), so the BatchNorm statistics folded into the weights are rank-identical;
* learnable (LSQ) scales are parameters: DDP averages their gradients like any weight.

Switch it per model with :func:`set_distributed_sync` / :func:`no_distributed_sync`; check a
replicated model with :func:`diverged_state`; try it on one machine with :func:`run_local`.
"""

from .api import diverged_state, no_distributed_sync, set_distributed_sync, sync_observers
from .batchnorm import sync_batch_norm
from .calibration import agree_on_batch, global_count
from .launch import run_local
from .observers import discard_pending, merge_pending, observe_distributed, syncs_every_batch
from .settings import DistributedSync, participants, world_size

__all__ = [
    "DistributedSync",
    "set_distributed_sync",
    "no_distributed_sync",
    "sync_observers",
    "diverged_state",
    "run_local",
    "participants",
    "world_size",
    "sync_batch_norm",
    "observe_distributed",
    "merge_pending",
    "discard_pending",
    "syncs_every_batch",
    "agree_on_batch",
    "global_count",
]

"""Shared test setup: deterministic seeds, a fixed-seed hypothesis profile, markers.

* Every test starts from the same seed for ``torch``, ``numpy`` and ``random`` (derived from
  its node id, so tests do not share a stream and a failure reproduces in isolation).
* Hypothesis runs derandomized (a fixed seed per test function), without deadline and without
  an example database, so ``pytest`` explores the same examples on every machine.  It also
  re-seeds ``random``, ``numpy`` and (registered below) torch's global generator per example.
* Marker ``slow``: long-running tests; deselect them with ``-m "not slow"``.
* torch runs single-threaded (see below).
"""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, register_random, settings

# The suite runs many small ops; intra-op threads only add contention on small CI machines
# (and make float reductions order-dependent).  One thread keeps timings and results stable.
torch.set_num_threads(1)

settings.register_profile(
    "fxquant",
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    # the autouse seeding fixture below is function scoped: it seeds once per test, and
    # hypothesis re-seeds the global generators for every example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("fxquant")


class _TorchGlobalRandom:
    """torch's default CPU generator with the ``seed / getstate / setstate`` interface that
    hypothesis uses to seed and restore PRNGs around each example (``torch.manual_seed`` would
    also probe accelerator backends: 100x slower, per example)."""

    def seed(self, seed: int) -> None:
        torch.default_generator.manual_seed(seed)

    def getstate(self) -> torch.Tensor:
        return torch.default_generator.get_state()

    def setstate(self, state: torch.Tensor) -> None:
        torch.default_generator.set_state(state)


_TORCH_RANDOM = _TorchGlobalRandom()  # hypothesis keeps only a weak reference
register_random(_TORCH_RANDOM)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running test (deselect with -m 'not slow')")


@pytest.fixture(autouse=True)
def _seed_everything(request: pytest.FixtureRequest) -> int:
    """Seed torch / numpy / random from the test's node id (stable across runs and machines)."""
    seed = zlib.crc32(request.node.nodeid.encode()) & 0x7FFF_FFFF
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return seed

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    """Every test in tests/nn starts from the same RNG state."""
    torch.manual_seed(0)
    yield

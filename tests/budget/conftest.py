"""One torch thread for these tests: the models are tiny, and on a small shared machine two threads
fighting other processes for two cores make each tiny matmul several times slower."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

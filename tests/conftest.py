"""Suite-wide settings: one intra-op thread.

The models in the tests are tiny, so a second thread buys little, while two threads competing with any
other load on a 2-core machine (DataLoader workers, a parallel job) slow a training step 10-20x.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

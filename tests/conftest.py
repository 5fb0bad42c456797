import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread_per_test_process():
    """Tiny models run fastest single-threaded; several OpenMP threads on 2 shared cores slow
    them by orders of magnitude."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

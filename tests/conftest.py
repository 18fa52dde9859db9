"Fixtures shared by the test files."
import pytest
import torch


@pytest.fixture(scope='module')
def one_thread():
    "Toy models' ops are tiny: two threads buy little, and run 5-10x slower than one while another process shares the cores."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

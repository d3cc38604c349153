import pytest
import torch

torch.set_num_threads(1)  # small tensors: one thread is fastest here (see theory_sim.cli)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    if not torch.cuda.is_available():
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)

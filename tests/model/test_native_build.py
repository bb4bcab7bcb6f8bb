"""Both native extensions are built with OpenMP: their at::parallel_for really uses torch's threads."""

import pytest
import torch

from nanoserve.model import cpu_linear, native_kernels

LOADERS = {
    "cpu_linear": (cpu_linear.load_avx512_kernel, cpu_linear.avx512_unavailable_reason),
    "native_kernels": (native_kernels.load_native_kernels, native_kernels.unavailable_reason),
}


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_extension_runs_on_every_thread(name):
    # Without -fopenmp at::parallel_for silently runs on the calling thread alone (half the speed here).
    load, reason = LOADERS[name]
    ext = load()
    if ext is None:
        pytest.skip(f"{name} unavailable: {reason()}")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert ext.parallel_threads_used(64) == 2
        torch.set_num_threads(1)
        assert ext.parallel_threads_used(64) == 1
    finally:
        torch.set_num_threads(before)

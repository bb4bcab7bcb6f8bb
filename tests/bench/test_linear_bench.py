"""`nanoserve bench linear`: the quantized-kernel rows time the packed weights and count their bytes."""

import pytest

from nanoserve.bench.linear import bench_linears
from nanoserve.model import quant_kernels


def test_quantized_rows_count_packed_bytes():
    if quant_kernels.load_quant_kernels() is None:
        pytest.skip(f"quantized kernels unavailable: {quant_kernels.quant_kernels_unavailable_reason()}")
    res = bench_linears("qwen2.5-0.5b", (1,), ("torch", "w8a16", "w4a16", "w8a8"), repeats=1, layers=1)
    rows = {r.backend: r for r in res}
    assert [rows[b].used for b in ("w8a16", "w4a16", "w8a8")] == ["w8a16", "w4a16", "w8a8"]
    bf16_bytes = rows["torch"].weight_bytes
    assert 0.5 < rows["w8a16"].weight_bytes / bf16_bytes < 0.51  # 1 byte per weight + per-channel scales
    assert 0.28 < rows["w4a16"].weight_bytes / bf16_bytes < 0.29  # ½ byte + 2 fp32 per group of 128
    assert all(r.step_ms > 0 for r in res)

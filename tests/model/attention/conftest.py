"""These tests build steps whose chunks must take the path each test names (decode rows or a prefill
chunk) at small contexts: the short-context rule (DECODE_ROWS_MAX_CONTEXT) is off here and tested on
its own in test_verify_rows.py."""

import pytest

from nanoserve.model.attention import torch_backend


@pytest.fixture(autouse=True)
def _chunks_by_length_only(monkeypatch):
    monkeypatch.setattr(torch_backend, "DECODE_ROWS_MAX_CONTEXT", 0)

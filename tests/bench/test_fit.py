"""First run: benchmark lengths fit the model's context by default, and lengths that cannot fit are an
error before any model is loaded or request sent (the demo model has a 128-token context)."""

import pytest

from nanoserve.bench.fit import LengthError, fit_lengths
from nanoserve.cli import main


def test_defaults_are_128_or_what_fits_the_context():
    assert fit_lengths(None, None, 4096) == (128, 128)
    assert fit_lengths(None, None, 128) == (64, 64)
    inp, out = fit_lengths(None, None, 128, 0.5, 0.5)
    assert inp * 1.5 + out * 1.5 <= 128 + 2 and inp > 10 and out > 10
    assert fit_lengths(10, None, 128) == (10, 118)
    assert fit_lengths(None, 100, 4096) == (128, 100)


def test_lengths_that_cannot_fit_name_the_flags_and_the_context():
    with pytest.raises(LengthError, match=r"--input-len 128 and --output-len 128 .* context of 128 tokens"):
        fit_lengths(128, 128, 128)
    with pytest.raises(LengthError):
        fit_lengths(60, 60, 128, 0.5, 0.0)  # the longest prompt, 90 tokens, leaves no room for 60


def test_bench_throughput_refuses_lengths_over_the_context_before_loading(tiny_model, capsys):
    model = tiny_model("llama")
    with pytest.raises(SystemExit, match=r"bench throughput: --input-len 200 .* context of 128 tokens"):
        main(["bench", "throughput", "--model", str(model), "--max-model-len", "128", "--input-len", "200",
              "--backend", "nanoserve"])

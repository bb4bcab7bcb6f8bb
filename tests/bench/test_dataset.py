import math

import pytest

from nanoserve.bench.dataset import length_bounds, random_requests, token_counts
from nanoserve.errors import InvalidRequestError


def test_length_bounds_follow_vllm_floor_ceil():
    assert length_bounds(128, 0.0) == (128, 128)
    assert length_bounds(100, 0.5) == (50, 150)
    assert length_bounds(10, 0.25) == (math.floor(7.5), math.ceil(12.5))
    assert length_bounds(1, 0.9)[0] == 1  # never zero tokens


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_range_ratio_outside_unit_interval_is_rejected(ratio):
    with pytest.raises(InvalidRequestError) as e:
        length_bounds(10, ratio)
    assert e.value.param == "range_ratio"


def test_random_requests_lengths_in_range_and_deterministic():
    reqs = random_requests(200, 100, 40, vocab_size=50, range_ratio=0.5, seed=3, special_ids={0, 1, 2})
    assert all(50 <= r.prompt_len <= 150 and 20 <= r.output_len <= 60 for r in reqs)
    assert len({r.prompt_len for r in reqs}) > 20  # actually spread, not fixed
    assert all(3 <= t < 50 for r in reqs for t in r.prompt_token_ids)  # special ids avoided
    again = random_requests(200, 100, 40, vocab_size=50, range_ratio=0.5, seed=3, special_ids={0, 1, 2})
    assert [r.prompt_token_ids for r in again] == [r.prompt_token_ids for r in reqs]
    assert token_counts(reqs) == (sum(r.prompt_len for r in reqs), sum(r.output_len for r in reqs))


def test_separate_input_and_output_ratios():
    reqs = random_requests(100, 288, 136, vocab_size=1000, input_range_ratio=0.7778, output_range_ratio=0.0)
    assert {r.output_len for r in reqs} == {136}
    assert min(r.prompt_len for r in reqs) >= 63 and max(r.prompt_len for r in reqs) <= 513

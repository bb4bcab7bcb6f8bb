"""Cost calculators: $/1M tokens, spot/reserved, fleets, monthly bill."""

from __future__ import annotations

import pytest

from nanoserve.errors import InvalidRequestError
from nanoserve.planner import cost


def test_cost_per_million_scales_with_price_and_utilisation():
    base = cost.cost_per_million_tokens(2.0, 1000).value
    assert base == pytest.approx(2.0 / 3.6)
    assert cost.cost_per_million_tokens(2.0, 1000, n_gpus=4).value == pytest.approx(4 * base)
    assert cost.cost_per_million_tokens(2.0, 1000, utilization=0.5).value == pytest.approx(2 * base)


def test_throughput_for_price_inverts_cost():
    need = cost.throughput_for_price(0.25, 3.0, n_gpus=2, utilization=0.8).value
    assert cost.cost_per_million_tokens(3.0, need, 2, 0.8).value == pytest.approx(0.25)


def test_spot_dearer_than_on_demand_is_said():
    s = cost.effective_spot_price(3.0, 0.5, on_demand_usd_per_hour=4.0)
    assert s.value == 6.0 and s.note == "dearer than on-demand"


def test_reserved_never_pays_off_above_on_demand():
    assert cost.reserved_break_even_utilization(5, 4).note == "reserved never pays off"


def test_fleet_headroom_and_validation():
    models = [cost.FleetModel("a", 0.5, 1000), cost.FleetModel("b", 0.5, 100, 2)]
    total, per = cost.fleet_size(models, 10, 100)
    assert [p.inputs["replicas"] for p in per] == [1, 5]  # ceil(500 / 1000), 500 / 100
    assert total.value == 1 + 5 * 2
    total, per = cost.fleet_size(models, 10, 100, headroom=0.25)
    assert [p.inputs["replicas"] for p in per] == [2, 7]  # ceil(1 · 1.25), ceil(5 · 1.25)
    assert total.value == 2 + 7 * 2
    with pytest.raises(InvalidRequestError, match="sum to 1"):
        cost.fleet_size([cost.FleetModel("a", 0.7, 1000)], 10, 100)


def test_monthly_bill_and_blended_price():
    bill = cost.monthly_bill(10, 2.0)
    assert bill.value == 14_400
    assert cost.cost_per_million_from_bill(bill.value, 1000).value == pytest.approx(14_400 / 2592)
    with pytest.raises(InvalidRequestError):
        cost.monthly_bill(0, 2.0)

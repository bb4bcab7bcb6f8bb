"""#15: inputs that used to crash (ZeroDivisionError, KeyError, TypeError) or were silently coerced
(2.7 GPUs → 2, batch 1.7 → 1, layers=0 → the preset's) are now a clear InvalidRequestError naming
the argument; Hardware objects are accepted wherever hardware is meant."""

from __future__ import annotations

import pytest

from nanoserve.cli import main
from nanoserve.errors import InvalidRequestError
from nanoserve.planner import cost, memory, models, parallel, serving, training
from nanoserve.planner.hardware import get_hardware

H100 = get_hardware("h100")


@pytest.mark.parametrize(
    ("call", "param"),
    [
        (lambda: parallel.dp_comm_per_step("llama-3.1-8b", dp=0), "dp"),
        (lambda: parallel.dp_comm_per_step("llama-3.1-8b", dp=2.5), "dp"),
        (lambda: parallel.tp_weight_memory_per_gpu("llama-3.1-8b", 2.5), "tp"),
        (lambda: training.training_time(1e9, 1e9, 0.5, 1e15), "n_gpus"),
        (lambda: training.training_cost(3600, 2.7, 2.0), "n_gpus"),
        (lambda: cost.cost_per_million_tokens(2.0, 1000, 2.7), "n_gpus"),
        (lambda: cost.cost_per_million_tokens(2.0, 1000, 0), "n_gpus"),
        (lambda: serving.decode_throughput(16e9, 2e12, batch=1.7), "batch"),
        (lambda: memory.kv_cache_per_token("llama-3.1-8b", layers=0), "layers"),
        (lambda: models.from_hf_config({"model_type": "llama"}), "model"),
        (lambda: models.from_hf_config({"model_type": "llama", "hidden_size": "x"}), "model"),
        (lambda: models.get_model(H100), "model"),
        (lambda: get_hardware(None), "hardware"),
        (lambda: serving.decode_throughput(16e9, H100), "bandwidth_bytes_per_s"),
    ],
)
def test_bad_input_is_an_invalid_request_naming_the_argument(call, param):
    with pytest.raises(InvalidRequestError) as e:
        call()
    assert e.value.param == param


def test_incomplete_config_names_the_missing_key():
    with pytest.raises(InvalidRequestError, match="hidden_size"):
        models.from_hf_config({"model_type": "llama"})


def test_explicit_layers_override_the_preset():
    full = memory.kv_cache_per_token("llama-3.1-8b").value
    assert memory.kv_cache_per_token("llama-3.1-8b", layers=16).value == full / 2


def test_hardware_objects_are_accepted_where_hardware_is_meant():
    by_name = memory.quick_fit(8e9, 2, 1, "h100")
    assert memory.quick_fit(8e9, 2, 1, H100).capacity_bytes == by_name.capacity_bytes == 80e9
    assert memory.memory_estimate("llama-3.1-8b", H100).capacity_bytes == 80e9
    assert parallel.collective_latency_s(H100) == parallel.collective_latency_s("h100")


@pytest.mark.parametrize("gpus", ["0", "2.7", "-1"])
@pytest.mark.parametrize(
    "topic", [["cost", "--tok-s", "1000"], ["training", "--model", "gpt2", "--tokens", "1e9"]]
)
def test_cli_rejects_non_whole_gpu_counts(topic, gpus, capsys):
    with pytest.raises(SystemExit) as e:
        main(["plan", *topic, "--gpus", gpus])
    assert e.value.code == 2

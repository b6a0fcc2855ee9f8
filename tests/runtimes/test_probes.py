"""Reading requests in flight from bodies shaped like the real servers' (llama-server's ``/slots`` and
``/metrics``, vLLM's ``/metrics``), and the probe paths of each backend type."""

from __future__ import annotations

import json

import pytest

from fleetd.core.desired import BackendType
from fleetd.runtimes import ProbeSpec, parse_in_flight, probe_spec
from fleetd.runtimes.probes import prometheus_gauge_sum


def llama_slot(slot_id: int, *, processing: bool) -> dict[str, object]:
    """One slot as llama-server's README documents ``GET /slots`` (trimmed ``params``)."""
    return {
        "id": slot_id,
        "id_task": 135 if processing else -1,
        "n_ctx": 65536,
        "speculative": False,
        "is_processing": processing,
        "params": {"n_predict": -1, "seed": 4294967295, "temperature": 0.800000011920929, "samplers": ["top_k"]},
        "next_token": {"has_next_token": processing, "has_new_line": False, "n_remain": -1, "n_decoded": 136},
    }


VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="qwen-7b"} 3.0
vllm:num_requests_running{engine="1",model_name="qwen-7b"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="qwen-7b"} 7.0
# HELP vllm:iteration_tokens_total Histogram of number of tokens per engine_step.
# TYPE vllm:iteration_tokens_total histogram
vllm:iteration_tokens_total_bucket{le="1.0",model_name="qwen-7b"} 3.0
vllm:num_requests_running_total{model_name="qwen-7b"} 99.0
"""

LLAMA_METRICS = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 1024
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 5
"""


def test_probe_paths_per_backend_type() -> None:
    assert probe_spec(BackendType.LLAMA_CPP) == ProbeSpec("/health", "/v1/models", "/slots")
    assert probe_spec(BackendType.VLLM) == ProbeSpec("/health", "/v1/models", "/metrics")
    assert probe_spec(BackendType.MLX_LM) == ProbeSpec("/v1/models", "/v1/models", None)


def test_llama_slots_count_the_ones_processing() -> None:
    body = json.dumps(
        [llama_slot(0, processing=True), llama_slot(1, processing=False), llama_slot(2, processing=True)]
    )
    assert parse_in_flight(BackendType.LLAMA_CPP, body) == 2
    idle = json.dumps([llama_slot(0, processing=False)])
    assert parse_in_flight(BackendType.LLAMA_CPP, idle) == 0


def test_llama_slots_of_older_releases_report_a_state() -> None:
    body = json.dumps([{"id": 0, "state": 1, "n_ctx": 2048}, {"id": 1, "state": 0, "n_ctx": 2048}])
    assert parse_in_flight(BackendType.LLAMA_CPP, body) == 1


def test_llama_metrics_body_is_read_too() -> None:
    assert parse_in_flight(BackendType.LLAMA_CPP, LLAMA_METRICS) == 2


@pytest.mark.parametrize(
    "body",
    [
        "",
        "not json",
        '{"error": {"code": 501, "message": "This server does not support slots endpoint."}}',
        "[1, 2]",
        '[{"id": 0}]',
    ],
)
def test_unreadable_llama_bodies_give_none(body: str) -> None:
    assert parse_in_flight(BackendType.LLAMA_CPP, body) is None


def test_vllm_running_requests_are_summed_over_engines_and_nothing_else() -> None:
    assert parse_in_flight(BackendType.VLLM, VLLM_METRICS) == 5


def test_vllm_metrics_without_the_gauge_give_none() -> None:
    assert parse_in_flight(BackendType.VLLM, "# HELP x\nprocess_cpu_seconds_total 1.5\n") is None
    assert parse_in_flight(BackendType.VLLM, "<html>Not Found</html>") is None


def test_mlx_never_reports_in_flight() -> None:
    assert parse_in_flight(BackendType.MLX_LM, '{"object": "list", "data": []}') is None


def test_prometheus_label_values_may_hold_braces_spaces_and_quotes() -> None:
    text = (
        'vllm:num_requests_running{model_name="a } b",path="x\\"y"} 4 1712345678000\n'
        "vllm:num_requests_running 1e0\n"
        "vllm:num_requests_running{broken 3\n"
        "vllm:num_requests_running NaN\n"
    )
    assert prometheus_gauge_sum(text, "vllm:num_requests_running") == 5

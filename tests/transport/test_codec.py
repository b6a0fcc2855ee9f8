"""The specs an agent receives survive the trip through JSON exactly, and a malformed one is refused with the
field's path (the agent answers INVALID_ARGUMENT and changes nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetd.manifest.loading import load_manifest, load_manifest_text
from fleetd.transport.codec import CodecError, decode_backend, decode_instance, encode

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fleet.yaml"


def test_every_instance_and_backend_of_the_example_round_trips() -> None:
    loaded = load_manifest([EXAMPLE])
    assert loaded.desired is not None
    for spec in loaded.desired.instances:
        assert decode_instance(encode(spec)) == spec
    for backend in loaded.desired.backends:
        assert decode_backend(encode(backend)) == backend


def test_options_of_every_type_environment_and_pins_round_trip() -> None:
    loaded = load_manifest_text(
        "version: 1\n"
        "backends:\n  b: {type: llama_cpp, install: {binary: /usr/bin/llama-server}}\n"
        "instances:\n"
        "  chat:\n"
        "    backend: b\n"
        "    model: /m.gguf\n"
        "    vram: 2GiB\n"
        "    options: {ctx_size: 4096, flash_attn: true, rope_freq_scale: 0.5, chat_template: chatml}\n"
        "    environment: {TOKEN: '${env:CHAT_TOKEN}', MODE: fast}\n"
        "    on_demand_start: true\n"
        "    scheduling: {min_replicas: 0, max_replicas: 2, nodes: [a, b], node_selector: {tier: fast}}\n"
    )
    assert loaded.desired is not None, [d.message for d in loaded.errors]
    spec = loaded.desired.instances[0]
    decoded = decode_instance(encode(spec))
    assert decoded == spec
    assert dict(decoded.options)["flash_attn"] is True and dict(decoded.options)["rope_freq_scale"] == 0.5
    assert dict(decoded.environment)["TOKEN"].secret


def test_the_encoding_holds_secret_references_never_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_TOKEN", "value-that-must-not-travel-in-the-spec")
    loaded = load_manifest_text(
        "version: 1\nbackends:\n  b: {type: llama_cpp, install: {binary: /x}}\n"
        "instances:\n  chat: {backend: b, model: /m.gguf, environment: {TOKEN: '${env:CHAT_TOKEN}'}}\n"
    )
    assert loaded.desired is not None
    text = encode(loaded.desired.instances[0])
    assert "${env:CHAT_TOKEN}" in text and "value-that-must-not" not in text


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(replica_count=3), r"InstanceSpec: unknown field 'replica_count'"),
        (lambda d: d.update(vram_bytes="lots"), r"InstanceSpec\.vram_bytes: str is not allowed here"),
        (lambda d: d.update(placement="everywhere"), r"InstanceSpec\.placement: 'everywhere' is not a Placement"),
        (
            lambda d: d["scheduling"].update(min_replicas=True),
            r"InstanceSpec\.scheduling\.min_replicas: expected int",
        ),
        (lambda d: d.update(options=[["ctx_size"]]), r"InstanceSpec\.options\[0\]: expected 2 items, got 1"),
    ],
)
def test_a_malformed_spec_names_the_field(mutate: object, message: str) -> None:
    loaded = load_manifest([EXAMPLE])
    assert loaded.desired is not None
    data = json.loads(encode(loaded.desired.instances[0]))
    assert callable(mutate)
    mutate(data)
    with pytest.raises(CodecError, match=message):
        decode_instance(json.dumps(data))


def test_not_json_is_refused() -> None:
    with pytest.raises(CodecError, match="BackendSpec: not JSON"):
        decode_backend("{")

"""Launch config hashes: what they cover, and their memo per desired state (which must not keep states alive)."""

from __future__ import annotations

import gc
import weakref

from fleetd.manifest.loading import load_manifest_text
from fleetd.planning import launch_config
from fleetd.planning.launch_config import config_hash, launch_hashes

MANIFEST = (
    "version: 1\n"
    "backends:\n  b: {type: llama_cpp, install: {binary: /usr/bin/llama-server}}\n"
    "instances:\n"
    "  chat: {backend: b, model: /m/chat.gguf, options: {ctx_size: 4096}}\n"
    "  code: {backend: b, model: /m/code.gguf, scheduling: {max_replicas: 3}}\n"
)


def test_launch_hashes_are_the_config_hashes_once_per_state_value() -> None:
    desired = load_manifest_text(MANIFEST).desired
    assert desired is not None
    hashes = launch_hashes(desired)
    backend = desired.backend("b")
    assert backend is not None
    assert hashes == {i.name: config_hash(i, backend) for i in desired.instances}
    assert launch_hashes(desired) is hashes
    edited = load_manifest_text(MANIFEST.replace("4096", "8192")).desired
    assert edited is not None
    changed = launch_hashes(edited)
    assert changed["chat"] != hashes["chat"] and changed["code"] == hashes["code"]


def test_the_memo_lets_a_state_go_and_forgets_it() -> None:
    gc.collect()  # states earlier tests left as garbage go first, so that only this one's entry is counted
    desired = load_manifest_text(MANIFEST).desired
    assert desired is not None
    launch_hashes(desired)
    entries = len(launch_config._hashes_by_state)
    gone = weakref.ref(desired)
    del desired
    gc.collect()
    assert gone() is None, "the memo kept the desired state alive"
    assert len(launch_config._hashes_by_state) == entries - 1

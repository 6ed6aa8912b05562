"""Image configs after a run: diff_ids, history entries and times (``SOURCE_DATE_EPOCH`` clamping)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from .model import Platform

__all__ = ["config_platform", "created_epoch", "history_comment", "iso", "squash_config", "update_config"]


def config_platform(config: Mapping[str, Any]) -> Platform | None:
    return Platform.from_json({k: config.get(k, "") for k in ("os", "architecture", "variant")})


def created_epoch(config: Mapping[str, Any]) -> int:
    created = config.get("created")
    if isinstance(created, str) and created:
        with contextlib.suppress(ValueError):
            return int(datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())
    return 0


def iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def update_config(
    config: Mapping[str, Any],
    diff_ids: list[str],
    dropped: list[int],
    added: bool,
    reasons: list[tuple[str, str, str]],
    pass_names: Sequence[str],
    clamp: int | None,
) -> dict[str, Any]:
    """The config after a rewrite: new diff_ids, emptied layers marked in the history, one history entry for
    the added layer, times clamped to ``clamp`` (``SOURCE_DATE_EPOCH``) when set."""
    new = copy.deepcopy(dict(config))
    rootfs = dict(new.get("rootfs") or {"type": "layers"})
    rootfs["diff_ids"] = diff_ids
    new["rootfs"] = rootfs
    history = new.get("history")
    if isinstance(history, list):
        history = [dict(h) if isinstance(h, dict) else h for h in history]
        layer_entries = [h for h in history if isinstance(h, dict) and not h.get("empty_layer")]
        if dropped and len(layer_entries) == len(diff_ids) - (1 if added else 0) + len(dropped):
            for number in dropped:
                layer_entries[number]["empty_layer"] = True
                layer_entries[number]["comment"] = (
                    str(layer_entries[number].get("comment", "")) + " (emptied by oci-optimizer)"
                ).strip()
        new["history"] = history
    if clamp is not None:
        new["created"] = iso(clamp)
    if added:
        created = new.get("created") if clamp is None else iso(clamp)
        entry: dict[str, Any] = {
            "created_by": "oci-optimizer: " + ",".join(pass_names),
            "comment": history_comment(reasons),
        }
        if created:
            entry["created"] = created
        new.setdefault("history", [])
        if isinstance(new["history"], list):
            new["history"].append(entry)
    if clamp is not None and isinstance(new.get("history"), list):
        for item in new["history"]:
            if isinstance(item, dict) and "created" in item:
                item["created"] = min_iso(item["created"], clamp)
    return new


def squash_config(
    config: Mapping[str, Any],
    diff_ids: list[str],
    protected: int,
    pass_names: Sequence[str],
    clamp: int | None,
) -> dict[str, Any]:
    """The config of a squashed image: the base's history entries, then one entry listing what was merged (one
    per layer when ``--layer-target-size`` cut it into several, the first with the list)."""
    new = copy.deepcopy(dict(config))
    rootfs = dict(new.get("rootfs") or {"type": "layers"})
    rootfs["diff_ids"] = diff_ids
    new["rootfs"] = rootfs
    history = [h for h in new.get("history") or [] if isinstance(h, dict)]
    kept: list[dict[str, Any]] = []
    merged: list[dict[str, Any]] = []
    seen_layers = 0
    for item in history:
        if seen_layers < protected:
            kept.append(item)
            if not item.get("empty_layer"):
                seen_layers += 1
        else:
            merged.append(item)
    created = new.get("created") if clamp is None else iso(clamp)
    for item in reversed(merged):
        if item.get("created"):
            created = item["created"] if clamp is None else min_iso(item["created"], clamp)
            break
    steps = [str(item.get("created_by") or item.get("comment") or "(no description)") for item in merged]
    entry: dict[str, Any] = {
        "created_by": "oci-optimizer --squash" + (": " + ",".join(pass_names) if pass_names else ""),
        "comment": f"{len(steps)} history entries merged into this layer: " + " | ".join(steps),
    }
    if created:
        entry["created"] = created
    if len(diff_ids) == protected:  # everything above the base was empty
        entry["empty_layer"] = True
    parts = len(diff_ids) - protected
    extra = [
        {
            **{k: v for k, v in entry.items() if k != "comment"},
            "comment": f"part {number} of {parts} of the squashed layer (--layer-target-size)",
        }
        for number in range(2, parts + 1)
    ]
    if extra:
        entry["comment"] = f"part 1 of {parts}: " + entry["comment"]
    new["history"] = [*kept, entry, *extra]
    if clamp is not None:
        new["created"] = iso(clamp)
        for item in new["history"]:
            if "created" in item:
                item["created"] = min_iso(item["created"], clamp)
    return new


def history_comment(reasons: Sequence[tuple[str, str, str]], limit: int = 4000) -> str:
    """What the new top layer holds, grouped by pass and reason: "inject: zoneinfo (tzdata 2026a): 38 files
    (usr/share/zoneinfo/UTC, ...)"."""
    groups: dict[tuple[str, str], list[str]] = {}
    for pass_name, path, reason in reasons:
        groups.setdefault((pass_name, reason), []).append(path)
    parts = []
    for (pass_name, reason), paths in groups.items():
        shown = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
        count = f"{len(paths)} files" if len(paths) > 1 else "1 file"
        parts.append(f"{pass_name}: {reason or 'added'}: {count} ({shown})")
    text = "; ".join(parts) or "files added by oci-optimizer"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def min_iso(value: Any, clamp: int) -> str:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            if datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() <= clamp:
                return value
    return iso(clamp)

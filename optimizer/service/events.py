"""Webhook bodies of every registry we listen to, normalised to one record: ``Event``.

Formats (detected from the headers and the body's shape, or fixed per source in the config):

- ``distribution``: Docker Distribution / CNCF distribution notifications, ``{"events": [...]}`` with
  ``Content-Type: application/vnd.docker.distribution.events.v1+json`` (v3 sends ``...events.v2+json``).
  One event per blob and per manifest; tagged pushes carry ``target.tag``.
- ``acr``: Azure Container Registry, one bare distribution-style event (``{"id", "action", "target", ...}``).
- ``harbor``: Harbor's default payload (``type: PUSH_ARTIFACT``, ``event_data.resources[]``) and its
  CloudEvents payload (``specversion``, ``type: harbor.artifact.pushed``, ``data.resources[]``).
- ``zot``: binary-mode CloudEvents (``Ce-Type: zotregistry.image.updated``, body ``{name, reference, digest,
  mediaType, manifest}``); the structured mode is read too.
- ``github``: ``X-GitHub-Event: registry_package`` (or ``package``) with ``registry_package.package_version``.

Nothing here trusts a host or URL from a body: ``Event.host`` is informational, the registry to contact comes
from the source's configuration. Names, tags and digests are checked against the distribution grammar, so
that an event cannot smuggle a path or a query into the URLs we build later.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy

from ..documents import parse_json
from ..errors import FormatError
from ..mediatypes import INDEX_TYPES, MANIFEST_TYPES

__all__ = ["MAX_JSON_DEPTH", "Event", "EventError", "detect_format", "parse_events", "valid_reference"]

# No registry nests its webhook bodies more than a few levels; Python's JSON parser recurses once per level
# and raises RecursionError (a 500) near a thousand, so deeper bodies are refused before parsing.
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_OPENING = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")

_REPOSITORY = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$|^sha512:[a-f0-9]{128}$")
# Manifests the optimizer reads; others (artifacts, helm charts, signatures) are left alone.
IMAGE_MEDIA_TYPES = MANIFEST_TYPES | INDEX_TYPES
DISTRIBUTION_CONTENT_TYPES = (
    "application/vnd.docker.distribution.events.v1+json",
    "application/vnd.docker.distribution.events.v2+json",
)


def valid_reference(repository: str, tag: str) -> bool:
    """Whether a repository name and a tag follow the distribution grammar (so they are safe in a URL)."""
    return len(repository) <= 255 and bool(_REPOSITORY.match(repository)) and bool(_TAG.match(tag))


class EventError(FormatError):
    """A webhook body that is not valid JSON, or not of any shape we read."""


@dataclass(frozen=True)
class Event:
    """One registry event, whatever sent it."""

    format: str  # distribution, acr, harbor, harbor-cloudevents, zot, github
    event_id: str | None  # the sender's id, for de-duplication of redeliveries; None when it has none
    action: str  # push, pull, delete, mount, ping, ... (lower case)
    repository: str
    tag: str | None
    digest: str | None
    media_type: str | None  # None when the sender does not say
    user_agent: str | None = None  # the pushing client's User-Agent, when the sender reports it
    actor: str | None = None
    host: str | None = None  # as reported by the sender: for logs only, never contacted

    def ignore_reason(self, our_user_agent: str) -> str | None:
        """Why the service does nothing with this event, or None when it is a tagged image push."""
        if self.action != "push":
            return f"action {self.action}"
        if self.user_agent and self.user_agent.startswith(our_user_agent):
            return "pushed by this service (user agent)"
        if not self.digest:
            return "no digest"
        if not self.tag:
            return "not tagged (a push by digest)"
        if self.media_type is not None and self.media_type not in IMAGE_MEDIA_TYPES:
            return f"not an image manifest or index ({self.media_type})"
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "id": self.event_id,
            "action": self.action,
            "repository": self.repository,
            "tag": self.tag,
            "digest": self.digest,
            "media_type": self.media_type,
        }


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EventError(f"{what}: expected a JSON object")
    return value


def _opt_str(data: Mapping[str, Any], key: str, what: str) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise EventError(f"{what}.{key}: expected a string")
    return value


def _repository(value: str | None, what: str) -> str:
    if not value or len(value) > 255 or not _REPOSITORY.match(value):
        raise EventError(f"{what}: {value!r} is not a valid repository name")
    return value


def _tag(value: str | None, what: str) -> str | None:
    """A tag, or None when absent; registries that put a digest where a tag goes (Harbor, zot) give None."""
    if value is None or _DIGEST.match(value):
        return None
    if not _TAG.match(value):
        raise EventError(f"{what}: {value!r} is not a valid tag")
    return value


def _digest(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not _DIGEST.match(value):
        raise EventError(f"{what}: {value!r} is not a valid digest")
    return value


def _distribution_event(raw: Any, fmt: str, what: str) -> Event:
    data = _obj(raw, what)
    action = (_opt_str(data, "action", what) or "").lower()
    if action == "ping":  # ACR's test delivery
        return Event(fmt, _opt_str(data, "id", what), "ping", "", None, None, None)
    target = _obj(data.get("target"), f"{what}.target")
    request = data.get("request")
    request = request if isinstance(request, dict) else {}
    actor = data.get("actor")
    actor = actor if isinstance(actor, dict) else {}
    return Event(
        format=fmt,
        event_id=_opt_str(data, "id", what),
        action=action or "unknown",
        repository=_repository(_opt_str(target, "repository", f"{what}.target"), f"{what}.target.repository"),
        tag=_tag(_opt_str(target, "tag", f"{what}.target"), f"{what}.target.tag"),
        digest=_digest(_opt_str(target, "digest", f"{what}.target"), f"{what}.target.digest"),
        media_type=_opt_str(target, "mediaType", f"{what}.target"),
        user_agent=_opt_str(request, "useragent", f"{what}.request"),
        actor=_opt_str(actor, "name", f"{what}.actor"),
        host=_opt_str(request, "host", f"{what}.request"),
    )


def _parse_distribution(body: Any, headers: Mapping[str, str]) -> list[Event]:
    envelope = _obj(body, "distribution notification")
    events = envelope.get("events")
    if not isinstance(events, list):
        raise EventError("distribution notification: expected an 'events' list")
    return [_distribution_event(raw, "distribution", f"events[{i}]") for i, raw in enumerate(events)]


def _parse_acr(body: Any, headers: Mapping[str, str]) -> list[Event]:
    return [_distribution_event(body, "acr", "acr event")]


_HARBOR_ACTIONS = {"PUSH_ARTIFACT": "push", "PULL_ARTIFACT": "pull", "DELETE_ARTIFACT": "delete"}


def _harbor_resources(
    data: Mapping[str, Any], fmt: str, event_id: str | None, action: str, actor: str | None
) -> list[Event]:
    repository = _obj(data.get("repository"), "harbor event repository")
    full_name = _opt_str(repository, "repo_full_name", "repository")
    if full_name is None:
        namespace = _opt_str(repository, "namespace", "repository")
        name = _opt_str(repository, "name", "repository")
        full_name = f"{namespace}/{name}" if namespace and name else name
    repo = _repository(full_name, "harbor event repository")
    resources = data.get("resources") or []
    if not isinstance(resources, list):
        raise EventError("harbor event: resources must be a list")
    events = []
    for i, raw in enumerate(resources):
        resource = _obj(raw, f"resources[{i}]")
        rid = event_id if event_id is None or len(resources) == 1 else f"{event_id}/{i}"
        events.append(
            Event(
                format=fmt,
                event_id=rid,
                action=action,
                repository=repo,
                tag=_tag(_opt_str(resource, "tag", f"resources[{i}]"), f"resources[{i}].tag"),
                digest=_digest(_opt_str(resource, "digest", f"resources[{i}]"), f"resources[{i}].digest"),
                media_type=None,
                actor=actor,
            )
        )
    return events


def _parse_harbor(body: Any, headers: Mapping[str, str]) -> list[Event]:
    data = _obj(body, "harbor event")
    kind = _opt_str(data, "type", "harbor event") or ""
    if "specversion" in data:  # CloudEvents (structured mode)
        action = kind.rsplit(".", 1)[-1] if kind.startswith("harbor.artifact.") else kind
        action = {"pushed": "push", "pulled": "pull", "deleted": "delete"}.get(action, action)
        payload = data.get("data")
        if action != "push":
            return [
                Event(
                    "harbor-cloudevents", _opt_str(data, "id", "harbor event"), action, "", None, None, None
                )
            ]
        return _harbor_resources(
            _obj(payload, "harbor event data"),
            "harbor-cloudevents",
            _opt_str(data, "id", "harbor event"),
            action,
            _opt_str(data, "operator", "harbor event"),
        )
    action = _HARBOR_ACTIONS.get(kind, kind.lower())
    if action != "push":
        return [Event("harbor", None, action or "unknown", "", None, None, None)]
    return _harbor_resources(
        _obj(data.get("event_data"), "harbor event_data"),
        "harbor",
        None,
        action,
        _opt_str(data, "operator", "harbor event"),
    )


def _zot_event(data: Mapping[str, Any], kind: str, event_id: str | None) -> list[Event]:
    suffix = kind.rsplit(".", 2)[-2:] if kind.count(".") >= 2 else [kind]
    action = {"image.updated": "push", "image.deleted": "delete"}.get(".".join(suffix), kind)
    if action != "push":
        return [Event("zot", event_id, action, "", None, None, None)]
    reference = _opt_str(data, "reference", "zot event")
    return [
        Event(
            format="zot",
            event_id=event_id,
            action="push",
            repository=_repository(_opt_str(data, "name", "zot event"), "zot event name"),
            tag=_tag(reference, "zot event reference"),
            digest=_digest(_opt_str(data, "digest", "zot event"), "zot event digest"),
            media_type=_opt_str(data, "mediaType", "zot event"),
        )
    ]


def _parse_zot(body: Any, headers: Mapping[str, str]) -> list[Event]:
    kind = _header(headers, "ce-type")
    if kind is not None:  # binary mode: attributes in headers, the data is the body
        return _zot_event(_obj(body, "zot event"), kind, _header(headers, "ce-id"))
    data = _obj(body, "zot event")
    if "specversion" not in data:
        raise EventError("zot event: no Ce-Type header and not a structured CloudEvent")
    return _zot_event(
        _obj(data.get("data"), "zot event data"),
        _opt_str(data, "type", "zot event") or "",
        _opt_str(data, "id", "zot"),
    )


def _parse_github(body: Any, headers: Mapping[str, str]) -> list[Event]:
    kind = _header(headers, "x-github-event") or "registry_package"
    delivery = _header(headers, "x-github-delivery")
    data = _obj(body, "github event")
    if kind == "ping":
        return [Event("github", delivery, "ping", "", None, None, None)]
    if kind not in ("registry_package", "package"):
        return [Event("github", delivery, kind, "", None, None, None)]
    action = (_opt_str(data, "action", "github event") or "").lower()
    package = _obj(data.get(kind), f"github event {kind}")
    package_type = (_opt_str(package, "package_type", kind) or "").lower()
    if action not in ("published", "updated") or package_type not in ("container", "docker"):
        return [Event("github", delivery, action or "unknown", "", None, None, None)]
    version = _obj(package.get("package_version"), f"{kind}.package_version")
    metadata = version.get("container_metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    tag_info = metadata.get("tag")
    tag_info = tag_info if isinstance(tag_info, dict) else {}
    namespace = _opt_str(package, "namespace", kind)
    name = _opt_str(package, "name", kind)
    repository = f"{namespace}/{name}".lower() if namespace else (name or "").lower()
    digest = _opt_str(tag_info, "digest", "container_metadata.tag") or _opt_str(
        version, "version", "package_version"
    )
    registry = package.get("registry")
    sender = data.get("sender")
    return [
        Event(
            format="github",
            event_id=delivery,
            action="push",
            repository=_repository(repository, f"{kind} namespace/name"),
            tag=_tag(_opt_str(tag_info, "name", "container_metadata.tag"), "container_metadata.tag.name"),
            digest=_digest(digest, "package_version digest"),
            media_type=None,
            actor=_opt_str(sender, "login", "sender") if isinstance(sender, dict) else None,
            host=_opt_str(registry, "host", "registry") if isinstance(registry, dict) else None,
        )
    ]


_PARSERS: dict[str, Callable[[Any, Mapping[str, str]], list[Event]]] = {
    "distribution": _parse_distribution,
    "acr": _parse_acr,
    "harbor": _parse_harbor,
    "zot": _parse_zot,
    "github": _parse_github,
}


def detect_format(body: Any, headers: Mapping[str, str]) -> str:
    """Which sender wrote this request, from its headers first and then the body's shape."""
    content_type = (_header(headers, "content-type") or "").split(";")[0].strip().lower()
    if content_type in DISTRIBUTION_CONTENT_TYPES:
        return "distribution"
    if _header(headers, "x-github-event") is not None:
        return "github"
    ce_type = _header(headers, "ce-type")
    if ce_type is not None:
        return "harbor" if ce_type.startswith("harbor.") else "zot"
    if isinstance(body, dict):
        if isinstance(body.get("events"), list):
            return "distribution"
        if "specversion" in body:
            kind = body.get("type")
            return "harbor" if isinstance(kind, str) and kind.startswith("harbor.") else "zot"
        if "event_data" in body and "type" in body:
            return "harbor"
        if "registry_package" in body:
            return "github"
        if "action" in body and ("target" in body or body.get("action") == "ping"):
            return "acr"
    raise EventError("not a webhook body of any registry we read (distribution, harbor, zot, github, acr)")


def json_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a JSON text nests arrays and objects deeper than ``limit`` (brackets inside strings do not
    count): the running sum of +1 per opening and -1 per closing bracket, in numpy (a body may be 1 MiB)."""
    brackets = _JSON_STRING.sub(b"", body).translate(_OPENING, _NOT_BRACKETS)
    if len(brackets) <= limit:
        return False
    steps = numpy.frombuffer(brackets, dtype=numpy.int8).astype(numpy.int32)
    return bool(numpy.cumsum(steps).max() > limit)


def parse_events(body: bytes, headers: Mapping[str, str], fmt: str = "auto") -> list[Event]:
    """Parse a webhook request body strictly (UTF-8, no duplicate keys, no NaN, at most ``MAX_JSON_DEPTH``
    levels) into events.

    Raises ``EventError`` for a body that is not JSON or not of the expected shape.
    """
    if json_depth_exceeds(body):
        raise EventError(f"webhook body: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = parse_json(body, "webhook body")
    except FormatError as error:
        raise EventError(str(error)) from error
    if fmt == "auto":
        fmt = detect_format(data, headers)
    if _header(headers, "ce-type") is not None and fmt == "harbor":
        data = {
            "specversion": "1.0",
            "type": _header(headers, "ce-type"),
            "id": _header(headers, "ce-id"),
            "data": data,
        }
    parser = _PARSERS.get(fmt)
    if parser is None:
        raise EventError(f"unknown event format {fmt!r}")
    return parser(data, headers)

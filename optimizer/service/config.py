"""The service configuration (``service.yaml``): parsed strictly into frozen, typed objects.

Every key is known; an unknown key, a wrong type or a dangling name (a rule naming a registry that is not
configured) is a ``UsageError`` that names the key's path, e.g. ``rules[1].destination.tag: ...``. Secrets
(webhook tokens, registry passwords) come from the file, an environment variable or a file on disk, and are
held in ``Secret`` objects that never show their value in a ``repr`` or a log line.

Shape (see ``testdata/service.example.yaml`` for a commented example)::

    listen: 127.0.0.1:8080
    state_dir: /var/lib/oci-optimizer
    concurrency: 2
    max_body_bytes: 1048576
    retry: {attempts: 5, backoff_seconds: 2, max_backoff_seconds: 300}
    queue: {backend: postgres, dsn: {env: OPTIMIZER_DSN}, lease_seconds: 120, heartbeat_seconds: 30}
    reconcile: {interval_seconds: 600, repositories: {local: [team/app]}}
    registries:
      local: {url: "http://127.0.0.1:5000", credentials: {username: bot, password: {env: REG_PASSWORD}},
              max_concurrent_jobs: 4}
    sources:
      local-notify: {registry: local, bearer_token: {env: HOOK_TOKEN}}
      github: {registry: ghcr, format: github, hmac_secret: {file: /run/secrets/gh}}
    rules:
      - name: apps
        registry: local
        repositories: ["team/*"]
        tags: ["*"]
        destination: {tag_suffix: "-opt", allowed_tags: ["*-opt"]}
        options: {skip: [upx], pass_options: {strip-elf: {mode: debug}}}
"""

from __future__ import annotations

import fnmatch
import os
import string
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml

from .. import settings
from ..errors import UsageError
from ..limits import Limits
from ..options import Options
from ..pipeline import select_passes
from .configreader import Reader, Secret, kind_of

__all__ = [
    "DEFAULT_USER_AGENT",
    "Config",
    "Destination",
    "QueueConfig",
    "ReconcileConfig",
    "RegistryConfig",
    "RetryConfig",
    "Rule",
    "Secret",
    "SourceConfig",
    "load_config",
    "parse_config",
]

DEFAULT_USER_AGENT = "oci-optimizer-service/0.1"
EVENT_FORMATS = ("auto", "distribution", "harbor", "zot", "github", "acr")
T = TypeVar("T")
EventFormat = Literal["auto", "distribution", "harbor", "zot", "github", "acr"]


@dataclass(frozen=True)
class RegistryConfig:
    name: str
    host: str  # host[:port], as used in references
    insecure: bool  # plain http (from an http:// URL)
    username: str | None = None
    password: Secret | None = None
    timeout: float = 30.0
    max_concurrent_jobs: int | None = None  # running jobs that pull from or push to it, fleet-wide


@dataclass(frozen=True)
class SourceConfig:
    """A sender of webhooks: which registry its events speak of, and how it proves who it is."""

    name: str
    registry: str
    format: EventFormat = "auto"
    bearer_token: Secret | None = None
    hmac_secret: Secret | None = None  # GitHub-style X-Hub-Signature-256


@dataclass(frozen=True)
class Destination:
    registry: str  # a configured registry name
    repository: str  # template: {repository}, {name}, {tag}
    tag: str  # template: {repository}, {name}, {tag}
    tag_suffix: str = ""  # from the ``tag_suffix`` shorthand: source tags ending with it are skipped
    allowed_tags: tuple[str, ...] = ()  # globs a rendered destination tag must match; empty: any tag

    def render(self, repository: str, tag: str) -> tuple[str, str]:
        values = {"repository": repository, "name": repository.rsplit("/", 1)[-1], "tag": tag}
        return self.repository.format(**values), self.tag.format(**values)

    def allows(self, tag: str) -> bool:
        return not self.allowed_tags or any(fnmatch.fnmatchcase(tag, p) for p in self.allowed_tags)


@dataclass(frozen=True)
class Rule:
    name: str
    registry: str
    repositories: tuple[str, ...]
    tags: tuple[str, ...]
    exclude_tags: tuple[str, ...]
    destination: Destination
    options: Options  # what the optimizer does (the same settings as the command line's)
    push_if_larger: bool = False  # push a result larger than its source (inject adds files on purpose)

    def matches(self, registry: str, repository: str, tag: str) -> bool:
        if registry != self.registry:
            return False
        if not any(fnmatch.fnmatchcase(repository, p) for p in self.repositories):
            return False
        if not any(fnmatch.fnmatchcase(tag, p) for p in self.tags):
            return False
        if any(fnmatch.fnmatchcase(tag, p) for p in self.exclude_tags):
            return False
        # A tag our own suffix made is an output, never an input (the loop guards would stop it later anyway).
        return not (self.destination.tag_suffix and tag.endswith(self.destination.tag_suffix))


@dataclass(frozen=True)
class RetryConfig:
    attempts: int = 5
    backoff_seconds: float = 2.0
    max_backoff_seconds: float = 300.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (attempt counts from 1)."""
        return float(min(self.max_backoff_seconds, self.backoff_seconds * (2 ** max(0, attempt - 1))))


@dataclass(frozen=True)
class QueueConfig:
    """Where jobs live: ``sqlite`` (``state_dir/queue.sqlite3``, one machine) or ``postgres`` (a fleet)."""

    backend: Literal["sqlite", "postgres"] = "sqlite"
    dsn: Secret | None = None  # postgres: a libpq connection string or URI (it holds the password)
    lease_seconds: float = 120.0  # a running job is another worker's to take once its lease is this old
    heartbeat_seconds: float = 30.0  # how often a worker renews the leases of its running jobs


@dataclass(frozen=True)
class ReconcileConfig:
    """Catch up on notifications the registry dropped: list these repositories' tags every interval."""

    interval_seconds: float
    repositories: Mapping[str, tuple[str, ...]]  # registry name -> repository names


@dataclass(frozen=True)
class Config:
    listen_host: str
    listen_port: int
    state_dir: Path
    registries: Mapping[str, RegistryConfig]
    sources: Mapping[str, SourceConfig]
    rules: tuple[Rule, ...]
    concurrency: int = 2
    max_body_bytes: int = 1 << 20
    retry: RetryConfig = RetryConfig()
    user_agent: str = DEFAULT_USER_AGENT
    admin_token: Secret | None = None  # when set, /jobs needs it
    log_level: str = "INFO"
    keep_workdirs: bool = False
    queue: QueueConfig = QueueConfig()
    reconcile: ReconcileConfig | None = None

    @property
    def database(self) -> Path:
        return self.state_dir / "queue.sqlite3"

    @property
    def registry_limits(self) -> dict[str, int]:
        return {name: r.max_concurrent_jobs for name, r in self.registries.items() if r.max_concurrent_jobs}

    @property
    def workdir(self) -> Path:
        return self.state_dir / "work"


def _check_template(text: str, at: str) -> str:
    try:
        fields = [name for _, name, spec, conv in string.Formatter().parse(text) if name is not None]
    except ValueError as error:
        raise UsageError(f"{at}: bad template {text!r}: {error}") from error
    for name in fields:
        if name not in ("repository", "name", "tag"):
            raise UsageError(
                f"{at}: unknown placeholder {{{name}}} (use {{repository}}, {{name}} or {{tag}})"
            )
    return text


def _registry(name: str, r: Reader) -> RegistryConfig:
    url = r.text("url", required=True)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise UsageError(f"{r.path}.url: expected http://HOST[:PORT] or https://HOST[:PORT], got {url!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise UsageError(f"{r.path}.url: no credentials, query or fragment in the URL")
    username: str | None = None
    password: Secret | None = None
    creds = r.mapping("credentials")
    if creds is not None:
        username = creds.text("username", required=True)
        password = creds.secret("password")
        if password is None:
            raise UsageError(f"{creds.path}.password: required")
        creds.done()
    timeout = r.number("timeout", 30.0, minimum=0.1)
    limit = r.integer("max_concurrent_jobs", 0, minimum=1) or None
    r.done()
    return RegistryConfig(name, parts.netloc, parts.scheme == "http", username, password, timeout, limit)


def _source(name: str, r: Reader, registries: Mapping[str, RegistryConfig]) -> SourceConfig:
    registry = r.text("registry", required=True)
    if registry not in registries:
        raise UsageError(f"{r.path}.registry: no registry named {registry!r} is configured")
    fmt = r.text("format", "auto")
    if fmt not in EVENT_FORMATS:
        raise UsageError(f"{r.path}.format: expected one of {', '.join(EVENT_FORMATS)}, got {fmt!r}")
    bearer = r.secret("bearer_token")
    hmac_secret = r.secret("hmac_secret")
    if (bearer is None) == (hmac_secret is None):
        raise UsageError(
            f"{r.path}: give exactly one of bearer_token or hmac_secret (unauthenticated hooks are refused)"
        )
    r.done()
    return SourceConfig(name, registry, typing.cast(EventFormat, fmt), bearer, hmac_secret)


def _destination(
    r: Reader | None, at: str, rule_registry: str, registries: Mapping[str, RegistryConfig]
) -> Destination:
    if r is None:
        raise UsageError(f"{at}: required (same_tag: true, tag_suffix: SUFFIX, or repository/tag templates)")
    registry = r.text("registry", rule_registry)
    if registry not in registries:
        raise UsageError(f"{r.path}.registry: no registry named {registry!r} is configured")
    same_tag = r.flag("same_tag", False)
    suffix = r.opt_str("tag_suffix")
    repository = _check_template(r.text("repository", "{repository}"), f"{r.path}.repository")
    tag = r.opt_str("tag")
    allowed_tags = r.str_list("allowed_tags", ())
    r.done()
    if sum((same_tag, suffix is not None, tag is not None)) > 1:
        raise UsageError(f"{r.path}: give only one of same_tag, tag_suffix or tag")
    if suffix is not None:
        tag = "{tag}" + suffix
    elif tag is None:
        tag = "{tag}"
    _check_template(tag, f"{r.path}.tag")
    overwrites = registry == rule_registry and repository == "{repository}" and tag == "{tag}"
    if overwrites and not same_tag:
        raise UsageError(
            f"{r.path}: the result would replace the source tag: say same_tag: true if that is meant"
        )
    return Destination(registry, repository, tag, suffix or "", allowed_tags)


def _rule_options(r: Reader | None, at: str) -> Options:
    """A rule's ``options``: the run options (the command line's settings, by field name),
    ``limits: {FIELD: VALUE}`` (``max_layer_bytes: 4G``) and ``pass_options: {PASS: {FIELD: VALUE}}``, each derived from the declared settings and checked now."""
    from passes import PASSES

    raw = dict(r.data) if r is not None and isinstance(r.data, dict) else {}
    if "keep_layers" in raw:  # the name of base_layers before 0.2
        raw["base_layers"] = raw.pop("keep_layers")
    classes = {cls.name: cls for cls in PASSES}
    chosen = raw.pop("pass_options", None) or {}
    if not isinstance(chosen, dict):
        raise UsageError(f"{at}.pass_options: expected a mapping of pass names, got {kind_of(chosen)}")
    pass_options = []
    for name, values in chosen.items():
        if name not in classes:
            raise UsageError(f"{at}.pass_options: unknown pass {name!r} (known: {', '.join(classes)})")
        pass_options.append(settings.from_mapping(classes[name].Options, values, f"{at}.pass_options.{name}"))
    limits = raw.pop("limits", None) or {}
    if not isinstance(limits, dict):
        raise UsageError(f"{at}.limits: expected a mapping (max_layer_bytes: 4G, ...), got {kind_of(limits)}")
    options: Options = settings.from_mapping(
        Options,
        raw,
        at,
        pass_options=tuple(pass_options),
        limits=settings.from_mapping(Limits, limits, f"{at}.limits"),
    )
    try:
        select_passes(PASSES, options.passes, options.skip, options.pass_options)
    except UsageError as error:
        raise UsageError(f"{at}: {error}") from error
    return options


def _queue(r: Reader | None) -> QueueConfig:
    if r is None:
        return QueueConfig()
    backend = r.text("backend", "sqlite")
    if backend not in ("sqlite", "postgres"):
        raise UsageError(f"queue.backend: expected sqlite or postgres, got {backend!r}")
    dsn = r.secret("dsn")
    if backend == "postgres" and dsn is None:
        raise UsageError("queue.dsn: required for the postgres backend (e.g. {env: OPTIMIZER_DSN})")
    if backend == "sqlite" and dsn is not None:
        raise UsageError("queue.dsn: only for the postgres backend")
    default = QueueConfig()
    lease = r.number("lease_seconds", default.lease_seconds, minimum=1.0)
    heartbeat = r.number("heartbeat_seconds", min(default.heartbeat_seconds, lease / 4), minimum=0.1)
    if heartbeat * 2 > lease:
        raise UsageError(
            f"queue.heartbeat_seconds: {heartbeat:g} is more than half of lease_seconds ({lease:g}): one late "
            "beat would lose the lease"
        )
    r.done()
    return QueueConfig(typing.cast(Literal["sqlite", "postgres"], backend), dsn, lease, heartbeat)


def _reconcile(r: Reader | None, registries: Mapping[str, RegistryConfig]) -> ReconcileConfig | None:
    if r is None:
        return None
    from .events import valid_reference

    interval = r.number("interval_seconds", 600.0, minimum=1.0)
    section = r.mapping("repositories")
    if section is None or not section.data:
        raise UsageError("reconcile.repositories: required: registry name -> list of repositories")
    repositories: dict[str, tuple[str, ...]] = {}
    for name in list(section.data):
        if name not in registries:
            raise UsageError(f"reconcile.repositories.{name}: no registry named {name!r} is configured")
        names = section.str_list(name, ())
        for repository in names:
            if not valid_reference(repository, "latest"):
                raise UsageError(f"reconcile.repositories.{name}: {repository!r} is not a repository name")
        repositories[name] = names
    section.done()
    r.done()
    return ReconcileConfig(interval, repositories)


def _named(root: Reader, key: str, empty: str, read: Callable[[str, Reader], T]) -> dict[str, T]:
    """A mapping of named sections (``registries``, ``sources``), each read by ``read``."""
    section = root.mapping(key)
    if section is None or not section.data:
        raise UsageError(f"{key}: {empty}")
    found = {name: read(name, Reader(section.raw(name), f"{key}.{name}")) for name in list(section.data)}
    section.done()
    return found


def _rules(raw_rules: Any, registries: Mapping[str, RegistryConfig]) -> list[Rule]:
    if not isinstance(raw_rules, list) or not raw_rules:
        raise UsageError("rules: expected a non-empty list of rules")
    rules: list[Rule] = []
    for i, raw in enumerate(raw_rules):
        r = Reader(raw, f"rules[{i}]")
        name = r.text("name", required=True)
        if any(rule.name == name for rule in rules):
            raise UsageError(f"rules[{i}].name: {name!r} is used twice")
        registry = r.text("registry", required=True)
        if registry not in registries:
            raise UsageError(f"rules[{i}].registry: no registry named {registry!r} is configured")
        rules.append(
            Rule(
                name=name,
                registry=registry,
                repositories=r.str_list("repositories", ("*", "*/*", "*/*/*")),
                tags=r.str_list("tags", ("*",)),
                exclude_tags=r.str_list("exclude_tags", ()),
                destination=_destination(
                    r.mapping("destination"), f"rules[{i}].destination", registry, registries
                ),
                options=_rule_options(r.mapping("options"), f"rules[{i}].options"),
                push_if_larger=r.flag("push_if_larger", False),
            )
        )
        r.done()
    return rules


def _retry(section: Reader | None) -> RetryConfig:
    retry = RetryConfig()
    if section is None:
        return retry
    retry = RetryConfig(
        attempts=section.integer("attempts", retry.attempts, minimum=1),
        backoff_seconds=section.number("backoff_seconds", retry.backoff_seconds),
        max_backoff_seconds=section.number("max_backoff_seconds", retry.max_backoff_seconds),
    )
    section.done()
    return retry


def parse_config(data: Any, base: Path | None = None) -> Config:
    """Build a ``Config`` from parsed YAML; relative paths are taken from ``base`` (the file's folder)."""
    root = Reader(data, "")
    listen = root.text("listen", "127.0.0.1:8080")
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"listen: expected HOST:PORT, got {listen!r}")
    state_dir = Path(root.text("state_dir", required=True))
    if not state_dir.is_absolute() and base is not None:
        state_dir = base / state_dir

    registries = _named(root, "registries", "at least one registry is required", _registry)
    sources = _named(
        root, "sources", "at least one webhook source is required", lambda n, r: _source(n, r, registries)
    )
    rules = _rules(root.raw("rules"), registries)
    retry = _retry(root.mapping("retry"))
    queue = _queue(root.mapping("queue"))
    reconcile = _reconcile(root.mapping("reconcile"), registries)

    log_level = root.text("log_level", "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise UsageError(f"log_level: expected DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
    config = Config(
        listen_host=host.strip("[]"),
        listen_port=int(port_text),
        state_dir=state_dir,
        registries=registries,
        sources=sources,
        rules=tuple(rules),
        concurrency=root.integer("concurrency", 2, minimum=1),
        max_body_bytes=root.integer("max_body_bytes", 1 << 20, minimum=1024),
        retry=retry,
        user_agent=root.text("user_agent", DEFAULT_USER_AGENT),
        admin_token=root.secret("admin_token"),
        log_level=log_level,
        keep_workdirs=root.flag("keep_workdirs", False),
        queue=queue,
        reconcile=reconcile,
    )
    root.done()
    return config


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and check ``service.yaml``; every problem is a ``UsageError`` naming the file and the key."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise UsageError(f"{file}: cannot read the service config: {error.strerror}") from error
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise UsageError(f"{file}: not valid YAML: {error}") from error
    try:
        return parse_config(data, file.resolve().parent)
    except UsageError as error:
        raise UsageError(f"{file}: {error}") from error

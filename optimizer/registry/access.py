"""How a run reaches the registries its ``docker://`` arguments name: TLS, credentials, timeouts.

Command-line flags (``add_arguments``/``from_args``), modelled on skopeo's::

    --src-tls-verify=false / --dest-tls-verify=false   HTTPS without certificate checks, else plain HTTP
    --insecure-registry HOST[:PORT]                    the same for one registry (repeatable)
    --src-creds USER[:PASSWORD] / --dest-creds ...     credentials (else docker config / environment)
    --registry-timeout SECONDS, --registry-retries N

Credentials otherwise come from ``auth.credentials_for`` (environment ``OCI_OPTIMIZER_REGISTRY_USER`` and
``OCI_OPTIMIZER_REGISTRY_PASSWORD``, ``~/.docker/config.json``, podman's ``auth.json``).
"""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..settings import refuse_argument

if TYPE_CHECKING:  # requests and oras load only when a run talks to a registry (see __init__)
    from .auth import Credentials
    from .client import RegistryClient

__all__ = ["DEFAULT_USER_AGENT", "DEST_FLAGS", "Clients", "RegistryAccess", "add_arguments", "from_args"]

try:
    from importlib.metadata import version as _version

    _VERSION = _version("oci-optimizer")
except Exception:  # pragma: no cover - not installed
    _VERSION = "0"

DEFAULT_USER_AGENT = f"oci-optimizer/{_VERSION}"

# The flags about the output's registry: a command that writes nothing refuses them (``add_arguments``).
DEST_FLAGS = ("--dest-tls-verify", "--dest-creds")


@dataclass(frozen=True)
class RegistryAccess:
    """How to reach registries. ``credentials``: per ``HOST[:PORT]``; ``src_credentials`` and
    ``dest_credentials`` win for the input's and the output's registry."""

    src_insecure: bool = False
    dest_insecure: bool = False
    insecure_registries: frozenset[str] = frozenset()
    src_credentials: Credentials | None = field(default=None, repr=False)
    dest_credentials: Credentials | None = field(default=None, repr=False)
    credentials: Mapping[str, Credentials] = field(default_factory=dict, repr=False, compare=False)
    timeout: float = 30.0
    retries: int = 4
    user_agent: str = DEFAULT_USER_AGENT

    def insecure_for(self, registry: str, *, source: bool) -> bool:
        return (self.src_insecure if source else self.dest_insecure) or registry in self.insecure_registries

    def credentials_for(self, registry: str, *, source: bool) -> Credentials | None:
        chosen = self.src_credentials if source else self.dest_credentials
        return chosen if chosen is not None else self.credentials.get(registry)


class Clients:
    """The registry clients of one run: one per registry and side, so a push knows which blobs its pull saw."""

    def __init__(self, access: RegistryAccess) -> None:
        self.access = access
        self._clients: dict[tuple[str, bool], RegistryClient] = {}
        self._lock = threading.Lock()

    def get(self, registry: str, *, source: bool) -> RegistryClient:
        access = self.access
        key = (registry, source)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                from .client import RegistryClient

                client = RegistryClient(
                    registry,
                    insecure=access.insecure_for(registry, source=source),
                    credentials=access.credentials_for(registry, source=source),
                    timeout=access.timeout,
                    retries=access.retries,
                    user_agent=access.user_agent,
                )
                self._clients[key] = client
            return client

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _credentials(text: str) -> Credentials:
    from .auth import Credentials

    user, colon, password = text.partition(":")
    if not colon:
        # skopeo prompts for a missing password; we read it from the environment instead of a terminal.
        password = os.environ.get("OCI_OPTIMIZER_REGISTRY_PASSWORD", "")
    return Credentials(user, password)


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, refuse_output: str | None = None
) -> None:
    """The registry flags of ``optimize`` (for ``docker://`` inputs and outputs); with ``refuse_output``, those
    of the output's registry (``DEST_FLAGS``) are refused with that reason (``settings.refuse_argument``)."""
    for side, what in (("src", "input"), ("dest", "output")):
        flag = f"--{side}-tls-verify"
        if side == "dest" and refuse_output is not None:
            refuse_argument(parser, [flag], refuse_output, default=True)
            continue
        parser.add_argument(
            flag,
            type=_bool,
            default=True,
            metavar="BOOL",
            help=f"verify the {what} registry's TLS certificate (false: unverified HTTPS, else plain HTTP)",
        )
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="talk to this registry without TLS verification (repeatable)",
    )
    for side, what in (("src", "input"), ("dest", "output")):
        flag = f"--{side}-creds"
        if side == "dest" and refuse_output is not None:
            refuse_argument(parser, [flag], refuse_output, default=None)
            continue
        parser.add_argument(
            flag,
            type=_credentials,
            metavar="USER[:PASSWORD]",
            help=f"credentials for the {what} registry (default: docker config / environment)",
        )
    parser.add_argument(
        "--registry-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="timeout of each registry request",
    )
    parser.add_argument(
        "--registry-retries", type=int, default=4, metavar="N", help="retries of a failed registry request"
    )


def from_args(args: argparse.Namespace) -> RegistryAccess:
    return RegistryAccess(
        src_insecure=not args.src_tls_verify,
        dest_insecure=not args.dest_tls_verify,
        insecure_registries=frozenset(args.insecure_registry or ()),
        src_credentials=args.src_creds,
        dest_credentials=args.dest_creds,
        timeout=args.registry_timeout,
        retries=args.registry_retries,
    )

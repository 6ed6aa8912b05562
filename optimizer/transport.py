"""Registry transports for the CLI and the library: ``docker://HOST/REPO:TAG`` inputs and outputs.

Like skopeo's transports, an image argument that starts with ``docker://`` names an image in a registry;
anything else is a local path. Inputs are pulled into an OCI image layout under the work directory
(``fetch_input``); outputs are written locally as an OCI layout and pushed (``publish_output``). Blobs the
destination already has are not uploaded again, and when the input came from the same registry the unchanged
layers are mounted across repositories instead of uploaded.

Command-line flags (``add_arguments``/``options_from_args``), modelled on skopeo's::

    --src-tls-verify=false / --dest-tls-verify=false   HTTPS without certificate checks, else plain HTTP
    --insecure-registry HOST[:PORT]                    the same for one registry (repeatable)
    --src-creds USER[:PASSWORD] / --dest-creds ...     credentials (else docker config / environment)
    --registry-timeout SECONDS, --registry-retries N

Credentials otherwise come from ``credentials_for`` (environment ``OCI_OPTIMIZER_REGISTRY_USER`` and
``OCI_OPTIMIZER_REGISTRY_PASSWORD``, ``~/.docker/config.json``, podman's ``auth.json``).
"""

from __future__ import annotations

import argparse
import os
import threading
from dataclasses import dataclass, field

from .errors import UsageError
from .registry import DEFAULT_USER_AGENT, Credentials, Reference, RegistryClient

__all__ = [
    "PREFIX",
    "TransportOptions",
    "add_arguments",
    "client_for",
    "fetch_input",
    "is_registry_ref",
    "options_from_args",
    "parse_registry_ref",
    "publish_output",
]

PREFIX = "docker://"


def is_registry_ref(text: str) -> bool:
    """True for ``docker://...`` image names (a registry), False for local paths."""
    return text.startswith(PREFIX)


def parse_registry_ref(text: str) -> Reference:
    """``docker://HOST/REPO:TAG`` -> ``Reference`` (``UsageError`` if it is not one)."""
    if not is_registry_ref(text):
        raise UsageError(f"{text!r} is not a registry reference (docker://HOST/REPO:TAG)")
    return Reference.parse(text[len(PREFIX) :])


@dataclass(frozen=True)
class TransportOptions:
    """How to reach the registries named by ``docker://`` arguments."""

    src_insecure: bool = False
    dest_insecure: bool = False
    insecure_registries: frozenset[str] = frozenset()
    src_credentials: Credentials | None = field(default=None, repr=False)
    dest_credentials: Credentials | None = field(default=None, repr=False)
    timeout: float = 30.0
    retries: int = 4

    def insecure_for(self, registry: str, *, source: bool) -> bool:
        return (self.src_insecure if source else self.dest_insecure) or registry in self.insecure_registries


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _credentials(text: str) -> Credentials:
    user, colon, password = text.partition(":")
    if not colon:
        # skopeo prompts for a missing password; we read it from the environment instead of a terminal.
        password = os.environ.get("OCI_OPTIMIZER_REGISTRY_PASSWORD", "")
    return Credentials(user, password)


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The registry flags of ``optimize`` (for ``docker://`` inputs and outputs)."""
    parser.add_argument(
        "--src-tls-verify",
        type=_bool,
        default=True,
        metavar="BOOL",
        help="verify the input registry's TLS certificate (false: unverified HTTPS, else plain HTTP)",
    )
    parser.add_argument(
        "--dest-tls-verify",
        type=_bool,
        default=True,
        metavar="BOOL",
        help="verify the output registry's TLS certificate (false: unverified HTTPS, else plain HTTP)",
    )
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="talk to this registry without TLS verification (repeatable)",
    )
    parser.add_argument(
        "--src-creds",
        type=_credentials,
        metavar="USER[:PASSWORD]",
        help="credentials for the input registry (default: docker config / environment)",
    )
    parser.add_argument(
        "--dest-creds",
        type=_credentials,
        metavar="USER[:PASSWORD]",
        help="credentials for the output registry (default: docker config / environment)",
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


def options_from_args(args: argparse.Namespace) -> TransportOptions:
    return TransportOptions(
        src_insecure=not args.src_tls_verify,
        dest_insecure=not args.dest_tls_verify,
        insecure_registries=frozenset(args.insecure_registry or ()),
        src_credentials=args.src_creds,
        dest_credentials=args.dest_creds,
        timeout=args.registry_timeout,
        retries=args.registry_retries,
    )


_clients: dict[tuple[object, ...], RegistryClient] = {}
_clients_lock = threading.Lock()


def client_for(
    registry: str,
    *,
    insecure: bool = False,
    credentials: Credentials | None = None,
    timeout: float = 30.0,
    retries: int = 4,
    user_agent: str = DEFAULT_USER_AGENT,
) -> RegistryClient:
    """One shared client per registry and settings, so that a push knows which blobs a pull saw (mounts)."""
    key = (registry, insecure, credentials, timeout, retries, user_agent)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            if len(_clients) >= 16:  # a long-lived process: do not keep every client ever made
                for old in _clients.values():
                    old.close()
                _clients.clear()
            client = RegistryClient(
                registry,
                insecure=insecure,
                credentials=credentials,
                timeout=timeout,
                retries=retries,
                user_agent=user_agent,
            )
            _clients[key] = client
        return client


def fetch_input(
    text: str,
    workdir: str,
    *,
    insecure: bool = False,
    credentials: Credentials | None = None,
    timeout: float = 30.0,
    retries: int = 4,
) -> str:
    """A local path for an image argument: ``docker://`` inputs are pulled into an OCI layout under
    ``workdir`` (its path is returned); anything else is returned unchanged."""
    if not is_registry_ref(text):
        return text
    ref = parse_registry_ref(text)
    client = client_for(
        ref.registry, insecure=insecure, credentials=credentials, timeout=timeout, retries=retries
    )
    os.makedirs(workdir, exist_ok=True)
    layout = _fresh_dir(workdir, "pulled")
    client.pull(ref, layout)
    return layout


def publish_output(
    local_layout_dir: str,
    text: str,
    *,
    insecure: bool = False,
    credentials: Credentials | None = None,
    timeout: float = 30.0,
    retries: int = 4,
    source: str | None = None,
) -> str:
    """Push the OCI layout at ``local_layout_dir`` (one root manifest) to the ``docker://`` destination
    ``text``; returns the pushed manifest digest. ``source``, the ``docker://`` input it came from, lets a
    push to the same registry mount the unchanged blobs instead of uploading them."""
    ref = parse_registry_ref(text)
    client = client_for(
        ref.registry, insecure=insecure, credentials=credentials, timeout=timeout, retries=retries
    )
    mount_from = None
    if source is not None and is_registry_ref(source):
        origin = parse_registry_ref(source)
        if origin.registry == ref.registry and origin.repository != ref.repository:
            mount_from = origin.repository
    return client.push(local_layout_dir, ref, mount_from=mount_from)


def _fresh_dir(parent: str, stem: str) -> str:
    number = 0
    while True:
        path = os.path.join(parent, f"{stem}-{number}" if number else stem)
        try:
            os.mkdir(path)
        except FileExistsError:
            number += 1
            continue
        return path

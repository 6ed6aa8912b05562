"""Registries: references, HTTP transport and authentication, the distribution protocol, whole-image copies.

- ``reference``: ``HOST[:PORT]/REPO[:TAG][@DIGEST]`` and ``docker://`` arguments;
- ``auth``: where credentials come from and how requests carry them;
- ``transport``: HTTP with timeouts, bounded retries and authentication (oras-py's defects wrapped);
- ``client``: manifests and blobs of one registry (``RegistryClient``);
- ``copy``: pull to and push from OCI layouts, and push straight from the image model;
- ``access``: how a run reaches registries (TLS, credentials, timeouts: the ``--src-*``/``--dest-*`` flags).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .access import DEFAULT_USER_AGENT, RegistryAccess
    from .auth import Credentials, RegistryAuthError, RegistryUnavailable, credentials_for
    from .client import MANIFEST_MEDIA_TYPES, Manifest, RegistryClient, TransferStats
    from .reference import PREFIX, Reference, is_registry_ref, parse_registry_ref

# Each name's module, imported on first use (PEP 562): a run that reads a local archive never loads requests
# and oras (with jsonschema and the registry client: 0.44 -> 0.22 s for the start of a run).
_HOMES = {
    "DEFAULT_USER_AGENT": "access",
    "RegistryAccess": "access",
    "Credentials": "auth",
    "RegistryAuthError": "auth",
    "RegistryUnavailable": "auth",
    "credentials_for": "auth",
    "MANIFEST_MEDIA_TYPES": "client",
    "Manifest": "client",
    "RegistryClient": "client",
    "TransferStats": "client",
    "PREFIX": "reference",
    "Reference": "reference",
    "is_registry_ref": "reference",
    "parse_registry_ref": "reference",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{home}", __name__), name)


__all__ = [
    "DEFAULT_USER_AGENT",
    "MANIFEST_MEDIA_TYPES",
    "PREFIX",
    "Credentials",
    "Manifest",
    "Reference",
    "RegistryAccess",
    "RegistryAuthError",
    "RegistryClient",
    "RegistryUnavailable",
    "TransferStats",
    "credentials_for",
    "is_registry_ref",
    "parse_registry_ref",
]

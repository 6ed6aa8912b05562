"""Registries: references, HTTP transport and authentication, the distribution protocol, whole-image copies.

- ``reference``: ``HOST[:PORT]/REPO[:TAG][@DIGEST]`` and ``docker://`` arguments;
- ``auth``: where credentials come from and how requests carry them;
- ``transport``: HTTP with timeouts, bounded retries and authentication (oras-py's defects wrapped);
- ``client``: manifests and blobs of one registry (``RegistryClient``);
- ``copy``: pull to and push from OCI layouts, and push straight from the image model;
- ``access``: how a run reaches registries (TLS, credentials, timeouts: the ``--src-*``/``--dest-*`` flags).
"""

from __future__ import annotations

from .access import RegistryAccess
from .auth import Credentials, RegistryAuthError, RegistryUnavailable, credentials_for
from .client import MANIFEST_MEDIA_TYPES, Manifest, RegistryClient, TransferStats
from .reference import PREFIX, Reference, is_registry_ref, parse_registry_ref
from .transport import DEFAULT_USER_AGENT

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

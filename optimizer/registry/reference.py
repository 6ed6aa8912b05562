"""Image references: ``HOST[:PORT]/REPO[:TAG][@sha256:...]``, and ``docker://`` arguments (skopeo's transport
names): a first component is a registry host only if it has a ``.`` or ``:`` or is ``localhost``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UsageError

__all__ = [
    "DOCKER_HUB",
    "DOCKER_HUB_API",
    "PREFIX",
    "Reference",
    "is_registry_ref",
    "parse_registry_ref",
    "valid_host",
    "valid_tag",
]

PREFIX = "docker://"
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"

_HOST = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$"
)
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


@dataclass(frozen=True)
class Reference:
    """``HOST[:PORT]/REPO[:TAG][@sha256:...]``.

    The first component is a registry host only if it has a ``.`` or a ``:`` or is ``localhost``; otherwise
    the registry is ``docker.io`` (and a one-component repository there is ``library/NAME``).
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        original = text
        if not text or text != text.strip():
            raise UsageError(f"invalid image reference {original!r}")
        digest: str | None = None
        if "@" in text:
            text, digest = text.split("@", 1)
            if not _DIGEST.match(digest):
                raise UsageError(
                    f"invalid image reference {original!r}: bad digest {digest!r} (want sha256:<64 hex>)"
                )
        first, slash, rest = text.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost"):
            registry, path = first, rest
            if not _HOST.match(registry):
                raise UsageError(f"invalid image reference {original!r}: bad registry host {registry!r}")
        else:
            registry, path = DOCKER_HUB, text
        tag: str | None = None
        last_slash = path.rfind("/")
        colon = path.rfind(":")
        if colon > last_slash:
            path, tag = path[:colon], path[colon + 1 :]
            if not _TAG.match(tag):
                raise UsageError(f"invalid image reference {original!r}: bad tag {tag!r}")
        if not path or not all(_PATH_COMPONENT.match(part) for part in path.split("/")):
            raise UsageError(
                f"invalid image reference {original!r}: bad repository {path!r} "
                "(lower-case letters, digits and separators . _ __ - between /-separated components)"
            )
        if registry == DOCKER_HUB and "/" not in path:
            path = f"library/{path}"
        return cls(registry, path, tag, digest)

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest if there is one, else the tag, else ``latest``."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, self.tag, digest)


def valid_host(text: str) -> bool:
    return bool(_HOST.match(text))


def valid_tag(text: str) -> bool:
    return bool(_TAG.match(text))


def is_registry_ref(text: str) -> bool:
    """True for ``docker://...`` image names (a registry), False for local paths."""
    return text.startswith(PREFIX)


def parse_registry_ref(text: str) -> Reference:
    """``docker://HOST/REPO:TAG`` -> ``Reference`` (``UsageError`` if it is not one)."""
    if not is_registry_ref(text):
        raise UsageError(f"{text!r} is not a registry reference (docker://HOST/REPO:TAG)")
    return Reference.parse(text[len(PREFIX) :])

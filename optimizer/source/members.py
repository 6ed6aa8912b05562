"""The members of a tar archive on disk, found once, read by offset (the outer archive of an input)."""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass

from ..errors import FormatError, InputError

__all__ = [
    "Member",
    "clean_member",
    "digest_from_name",
    "hash_member",
    "list_tar",
    "read_member",
    "resolve_member",
]


@dataclass
class Member:
    offset: int
    size: int
    kind: str  # "file", "dir", "symlink", "hardlink", "other"
    link: str


def clean_member(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/")


def list_tar(path: str, label: str) -> dict[str, Member]:
    """Every member of the tar at ``path``; a member whose data runs past the end of the file (a truncated
    archive) is a ``FormatError``."""
    members: dict[str, Member] = {}
    end = os.path.getsize(path)
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if info.offset_data + info.size > end and info.isreg():
                    raise FormatError(
                        f"{label}: the archive is truncated: {info.name} needs {info.size} bytes at offset "
                        f"{info.offset_data}, the file has {end}"
                    )
                clean = clean_member(info.name)
                if info.isreg():
                    kind = "file"
                elif info.isdir():
                    kind = "dir"
                elif info.issym():
                    kind = "symlink"
                elif info.islnk():
                    kind = "hardlink"
                else:
                    kind = "other"
                members[clean] = Member(info.offset_data, info.size, kind, info.linkname)
    except (tarfile.TarError, EOFError, ValueError) as error:
        raise FormatError(f"{label}: not a tar archive or a corrupt one: {error}") from error
    except OSError as error:
        raise InputError(f"{label}: reading failed: {error}") from error
    return members


def resolve_member(members: dict[str, Member], name: str, label: str) -> Member:
    """Follow symlinks and hardlinks between members (docker 1.x de-duplicated layers that way)."""
    seen: set[str] = set()
    current = clean_member(name)
    while True:
        member = members.get(current)
        if member is None:
            raise InputError(f"{label}: {name} is missing from the archive")
        if member.kind == "file":
            return member
        if member.kind not in ("symlink", "hardlink") or current in seen:
            raise InputError(f"{label}: {name} is not a regular file in the archive")
        seen.add(current)
        if member.kind == "symlink":
            base = current.rsplit("/", 1)[0] if "/" in current else ""
            target = os.path.normpath(os.path.join(base, member.link))
        else:
            target = member.link
        current = clean_member(target)


def read_member(path: str, member: Member) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(member.offset)
        return handle.read(member.size)


def hash_member(path: str, member: Member) -> tuple[str, bytes]:
    """A member's sha256 digest and its first 8 bytes (to sniff its compression)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(member.offset)
        left = member.size
        head = b""
        while left:
            chunk = handle.read(min(left, 1 << 20))
            if not chunk:
                break
            if not head:
                head = chunk[:8]
            digest.update(chunk)
            left -= len(chunk)
    return "sha256:" + digest.hexdigest(), head


def digest_from_name(name: str) -> str:
    """``blobs/sha256/<hex>``, ``<hex>.json``, ``sha256:<hex>`` -> ``sha256:<hex>`` (or "" when not a digest)."""
    clean = clean_member(name)
    parts = clean.split("/")
    if len(parts) == 3 and parts[0] == "blobs":
        return f"{parts[1]}:{parts[2]}"
    base = parts[-1]
    for suffix in (".json", ".tar.gz", ".tar", ".gz"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    if base.startswith("sha256:"):
        base = base[7:]
    if len(base) == 64 and all(c in "0123456789abcdef" for c in base):
        return "sha256:" + base
    return ""

"""passwd and group: parsing the image's files, the entries a config ``User`` needs, extended copies checked.

A numeric user keeps the primary group the runtime gives it today (the group in ``User``, else 0); a named
user or group the image does not define gets an id chosen here (from ``/home/NAME`` when that exists).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from optimizer.errors import OptimizerError
from optimizer.filesystem import FileSystem
from optimizer.model import EntryKind

__all__ = [
    "NAME",
    "NOBODY_ID",
    "NOLOGIN",
    "Accounts",
    "GroupEntry",
    "PasswdEntry",
    "extended",
    "group_line",
    "parse_group",
    "parse_passwd",
    "passwd_line",
    "read_table",
    "split_user",
    "verify_table",
]

NOLOGIN = "/sbin/nologin"
_FIRST_ALLOCATED_ID = 1000
NOBODY_ID = 65534
_NONROOT_ID = 65532  # distroless's "nonroot"; a uid images often run as without defining it


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int


def _records(text: str, count: int) -> Iterator[list[str]]:
    """The fields of each line of a passwd-style file that has ``count`` of them or more and a name; comments,
    NIS ``+``/``-`` lines and junk are skipped."""
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= count and fields[0] and fields[0][0] not in "#+-":
            yield fields


def parse_passwd(text: str) -> list[PasswdEntry]:
    """The well-formed entries of a passwd file (numeric uid and gid)."""
    return [
        PasswdEntry(fields[0], int(fields[2]), int(fields[3]))
        for fields in _records(text, 7)
        if fields[2].isdigit() and fields[3].isdigit()
    ]


def parse_group(text: str) -> list[GroupEntry]:
    """The well-formed entries of a group file (numeric gid)."""
    return [GroupEntry(fields[0], int(fields[2])) for fields in _records(text, 4) if fields[2].isdigit()]


def passwd_line(name: str, uid: int, gid: int, gecos: str, home: str, shell: str) -> str:
    return f"{name}:x:{uid}:{gid}:{gecos}:{home}:{shell}\n"


def group_line(name: str, gid: int) -> str:
    return f"{name}:x:{gid}:\n"


def extended(old: str, lines: Sequence[str]) -> str:
    """``old`` with ``lines`` appended, a newline added first when the old file lacks its final one."""
    if old and not old.endswith("\n"):
        old += "\n"
    return old + "".join(lines)


# A user or group name we may write into passwd/group (useradd's rule, digits first allowed for uids).
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\$?$")


def split_user(user: str) -> tuple[str, str]:
    """Config ``User`` -> (user, group): ``name``, ``uid``, ``name:group``, ``uid:gid`` and mixes."""
    user = user.strip()
    name, _, group = user.partition(":")
    return name, group


def _free_id(used: set[int], start: int = _FIRST_ALLOCATED_ID) -> int:
    candidate = start
    while candidate in used:
        candidate += 1
    return candidate


def _unique_name(preferred: str, fallback: str, taken: set[str]) -> str:
    if preferred not in taken:
        return preferred
    candidate, number = fallback, 1
    while candidate in taken:
        number += 1
        candidate = f"{fallback}_{number}"
    return candidate


@dataclass
class Accounts:
    """The passwd and group entries an image will have, and the lines this run adds to each."""

    users: list[PasswdEntry]
    groups: list[GroupEntry]
    passwd_lines: list[str] = field(default_factory=list)
    group_lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add_user(self, name: str, uid: int, gid: int, home: str, shell: str) -> None:
        self.users.append(PasswdEntry(name, uid, gid))
        self.passwd_lines.append(passwd_line(name, uid, gid, name, home, shell))

    def add_group(self, name: str, gid: int) -> None:
        self.groups.append(GroupEntry(name, gid))
        self.group_lines.append(group_line(name, gid))

    def group_for(self, group: str) -> int:
        """The gid of ``group`` (a name or a number), adding an entry when none covers it."""
        if group.isdigit():
            gid = int(group)
            if all(g.gid != gid for g in self.groups):
                preferred = "nonroot" if gid == _NONROOT_ID else f"group{gid}"
                self.add_group(_unique_name(preferred, f"group{gid}", {g.name for g in self.groups}), gid)
            return gid
        for entry in self.groups:
            if entry.name == group:
                return entry.gid
        gid = _free_id({g.gid for g in self.groups})
        self.add_group(group, gid)
        self.warnings.append(f"group {group!r} of the config's User is not defined: added with gid {gid}")
        return gid

    def cover_user(self, user: str, group: str, fs: FileSystem) -> None:
        """Add what the config's ``User`` (``user[:group]``) needs and the image lacks."""
        gid = self.group_for(group) if group else None
        if user.isdigit():
            uid = int(user)
            if any(u.uid == uid for u in self.users):
                return
            preferred = "nonroot" if uid == _NONROOT_ID else f"user{uid}"
            name = _unique_name(preferred, f"user{uid}", {u.name for u in self.users})
            # The runtime gives a uid without a passwd entry the group in User, else gid 0: keep that.
            self.add_user(name, uid, gid if gid is not None else 0, "/", NOLOGIN)
            return
        if any(u.name == user for u in self.users):
            return
        used_uids = {u.uid for u in self.users}
        home = fs.lookup(f"home/{user}")
        owner = home.entry if home is not None and home.entry.kind is EntryKind.DIR else None
        from_home = owner is not None and owner.uid != 0 and owner.uid not in used_uids
        if owner is not None and from_home:
            uid, origin = owner.uid, f"the owner of /home/{user}"
        else:
            uid, origin = _free_id(used_uids), "the first free uid"
        if gid is None:
            gids = {g.gid for g in self.groups}
            if owner is not None and from_home and owner.gid != 0:
                gid = owner.gid
            else:
                gid = uid if uid not in gids else _free_id(gids)
            if gid not in gids:
                self.add_group(_unique_name(user, f"group{gid}", {g.name for g in self.groups}), gid)
        self.add_user(user, uid, gid, "/", NOLOGIN)
        self.warnings.append(
            f"user {user!r} of the config's User is not defined: "
            f"added with uid {uid} ({origin}) and gid {gid}"
        )


def read_table(fs: FileSystem, path: str) -> tuple[str, str | None, int]:
    """(where it really is, its text or None when missing, its mode) for /etc/passwd or /etc/group."""
    resolved = fs.resolve(path)
    node = None if resolved is None else fs.get(resolved)
    if resolved is None or node is None or node.content is None:
        return path, None, 0o644
    text = node.content.read_bytes().decode("utf-8", "surrogateescape")
    return resolved, text, node.entry.mode & 0o7777


def verify_table(path: str, old: str, new: str, added: int, parse: Any) -> None:
    """The new file keeps every old byte and each added line parses as one entry."""
    if not new.startswith(old) or len(parse(new)) != len(parse(old)) + added:
        raise OptimizerError(f"/{path}: the extended copy does not parse back ({added} lines added)")

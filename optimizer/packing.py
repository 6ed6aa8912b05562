"""How the layers we write are packed (``--pack pull``, ``--layer-target-size``): the order of a layer's
entries for a client that extracts while it pulls, and a squashed layer cut into parts pulled in parallel.

Both depend on the entries alone, never on the order given or on the host: two runs give the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .layer import WHITEOUT_PREFIX
from .model import Content, Entry, EntryKind
from .rebuild import path_key

__all__ = ["SMALL_FILE", "pull_order", "split_layer"]

SMALL_FILE = 64 * 1024  # pull order: files up to this size come first


def pull_order(items: Sequence[tuple[Entry, Content | None]]) -> list[tuple[Entry, Content | None]]:
    """The entries of a layer in pull order: whiteouts and opaque markers, then directories, then symlinks and
    other non-files (each group in path order), then the regular files up to ``SMALL_FILE`` bytes and then
    the larger ones (each in path order, which keeps similar files together for the codec), every copy of a
    file's bytes right after the first, and each file's hardlinks right after it.

    A streaming extractor so has the tree and the small files early, and the codec meets identical files
    within its window (measured on the bench image: 0.1-0.2% smaller than path order with gzip and zstd; by
    size alone it was 1.7-2.4% larger). The order depends on the entries alone, not on the order given: two
    runs give the same bytes.
    """
    markers: list[tuple[Entry, Content | None]] = []
    directories: list[tuple[Entry, Content | None]] = []
    others: list[tuple[Entry, Content | None]] = []
    files: list[tuple[Entry, Content | None]] = []
    links: dict[str, list[tuple[Entry, Content | None]]] = {}
    paths = {entry.path for entry, _ in items if entry.kind is EntryKind.FILE}
    for entry, content in items:
        name = entry.path.rsplit("/", 1)[-1]
        if name.startswith(WHITEOUT_PREFIX):
            markers.append((entry, content))
        elif entry.kind is EntryKind.DIR:
            directories.append((entry, content))
        elif entry.kind is EntryKind.FILE:
            files.append((entry, content))
        elif entry.kind is EntryKind.HARDLINK and entry.link in paths:
            links.setdefault(entry.link, []).append((entry, content))
        else:
            others.append((entry, content))  # symlinks, devices, links to files of lower layers

    def by_path(item: tuple[Entry, Content | None]) -> str:
        return path_key(item[0].path)

    out = sorted(markers, key=by_path) + sorted(directories, key=by_path) + sorted(others, key=by_path)
    ordered = sorted(files, key=lambda item: (item[0].size > SMALL_FILE, path_key(item[0].path)))
    copies: dict[str, list[tuple[Entry, Content | None]]] = {}
    for item in ordered:
        copies.setdefault(item[1].sha256 if item[1] is not None else item[0].path, []).append(item)
    for item in ordered:
        key = item[1].sha256 if item[1] is not None else item[0].path
        for copy in copies.pop(key, ()):
            out.append(copy)
            out.extend(sorted(links.get(copy[0].path, ()), key=by_path))
    return out


def split_layer(
    items: Sequence[tuple[Entry, Content | None]], target: int
) -> list[list[tuple[Entry, Content | None]]]:
    """``items`` (in pull order) cut into layers of about ``target`` bytes of tar each, to be pulled in
    parallel and applied in order.

    The first holds every whiteout and directory, the links and the smallest files; each further layer holds
    the next files with their hardlinks, and again the directories above them, with the same metadata (a
    layer that lacks a parent's entry would get one made up by the extractor, and its mode and owner would win
    in the merged view). A file larger than ``target`` is a layer of its own; no layer is empty.
    """
    directories = {entry.path: (entry, content) for entry, content in items if entry.kind is EntryKind.DIR}
    parts: list[list[tuple[Entry, Content | None]]] = [[]]
    present: set[str] = set()  # the directories the current layer has
    size = 0
    for item in items:
        entry = item[0]
        grows = entry.kind is EntryKind.FILE and not entry.path.rsplit("/", 1)[-1].startswith(WHITEOUT_PREFIX)
        cost = 512 + (entry.size + 511) // 512 * 512 if grows else 512
        if grows and size and size + cost > target:
            parts.append([])
            present = set()
            size = 0
        if len(parts) > 1:
            for parent in _parents_of(entry.path, directories, present):
                parts[-1].append(parent)
                present.add(parent[0].path)
        parts[-1].append(item)
        if entry.kind is EntryKind.DIR:
            present.add(entry.path)
        size += cost
    return [part for part in parts if part]


def _parents_of(
    path: str, directories: Mapping[str, tuple[Entry, Content | None]], seen: set[str]
) -> list[tuple[Entry, Content | None]]:
    parts = path.split("/")
    out = []
    for i in range(1, len(parts)):
        parent = "/".join(parts[:i])
        if parent in directories and parent not in seen:
            out.append(directories[parent])
    return out

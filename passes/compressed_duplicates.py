"""Pass ``compressed-duplicates``: delete compressed files whose decompressed bytes are already in the image.

Layers are compressed already, so ``foo.gz`` next to ``foo`` with the same content costs its size twice for
nothing. A ``.gz``, ``.bz2``, ``.xz``, ``.lzma``, ``.zst``, ``.br`` or ``.lz4`` file is deleted when its
decompressed content equals, byte for byte, a regular file of the final image: by default its twin in the same
directory under the name without the suffix; with ``--duplicates any-path`` any file with the same content.

Decompression is streamed (nothing is held whole), bounded by the size of the largest possible twin, by
``--duplicates-max-size`` and by a ratio to the compressed size, so bombs cost little; a file that does not
decompress cleanly (corrupt, truncated, trailing garbage, wrong magic) is left alone. A match found by digest
is verified by comparing the decompressed stream with the twin byte for byte before the deletion is recorded.

Precompressed files that a web server of the image sends on purpose are kept: ``passes.servers`` reads the
image's own configuration and application files (nginx ``gzip_static``/``brotli_static``, Apache rewrite
recipes, Caddy ``precompressed``, h2o ``file.send-compressed``, lighttpd magnet scripts, and Node middleware
such as express-static-gzip), resolves their roots through the image's symlinks, and the twins under those
roots are kept; when such a server is there but its root cannot be told, every twin with the suffixes it
sends is kept, with a warning. ``--keep GLOB`` keeps files for any other server.

It never deletes the twin, a symlink, a file hardlinked from another layer, anything in a protected layer, or
a file a package manager lists (``passes.packages``, unless ``--touch-package-files``); each is reported as
kept. A deleted file that a ``*.dist-info/RECORD`` lists loses its line there. Decompression is ``passes.decompression``'s (``zstandard``, ``brotli`` 1.2+ and ``lz4``).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from optimizer.filesystem import FileSystem, Node
from optimizer.model import Content, EntryKind
from optimizer.pipeline import PassContext
from optimizer.settings import setting
from passes import packages
from passes.decompression import (
    CODECS,
    CorruptStream,
    Decoded,
    LimitExceeded,
    Limits,
    digest_decompressed,
    same_decompressed,
)
from passes.servers.files import node_at

if TYPE_CHECKING:
    from passes.servers import Served

__all__ = ["CompressedDuplicates", "CompressedDuplicatesOptions"]


@dataclass(frozen=True)
class CompressedDuplicatesOptions:
    """match: "same-dir" (twin = same name without the suffix) or "any-path" (same content anywhere).
    keep: globs of paths never deleted (matched against "/path" and "path"; ``*`` crosses ``/``).
    max_size: decompressed bytes read per file at most; max_ratio: decompressed per compressed byte at most.
    servers: keep what the image's web servers send precompressed (``passes.servers``)."""

    match: Literal["same-dir", "any-path"] = setting(
        "same-dir",
        "where the twin may be: same-dir (FILE.gz beside FILE; default) or any-path (same bytes)",
        flag="--duplicates",
    )
    keep: tuple[str, ...] = setting(
        (),
        "never delete compressed files matching GLOB (repeatable; for servers not detected)",
        flag="--keep",
        aliases=("--duplicates-keep",),
        metavar="GLOB",
        repeat=True,
    )
    servers: bool = setting(
        True,
        "delete duplicates even where the image's web servers send them precompressed",
        flag="--duplicates-ignore-servers",
        aliases=("--duplicates-ignore-nginx",),
    )
    max_size: int = setting(1 << 30, "decompress at most BYTES per file", metavar="BYTES")
    max_ratio: int = setting(1100, "give up past N decompressed bytes per compressed byte", metavar="N")


@dataclass(frozen=True)
class _Candidate:
    path: str
    node: Node
    suffix: str
    codec: str


class CompressedDuplicates:
    """Delete .gz/.bz2/.xz/.lzma/.zst/.br/.lz4 files whose decompressed content is already in the image.

    See the module docstring: the twin is the same name without the suffix in the same directory (or, with
    ``--duplicates any-path``, any regular file with the same content); decompression is streamed and bounded;
    matches are verified byte for byte; what the image's web servers send precompressed and ``--keep`` globs are
    kept; protected layers are reported, never changed.
    """

    name = "compressed-duplicates"
    flag_prefix = "duplicates"
    summary = "Delete compressed files (.gz .bz2 .xz .zst .br .lz4) whose content is already in the image"
    Options = CompressedDuplicatesOptions

    def __init__(self, options: CompressedDuplicatesOptions) -> None:
        self.options = options

    def run(self, ctx: PassContext) -> None:
        fs = ctx.fs
        candidates = self._candidates(fs)
        by_content: dict[tuple[int, str], list[str]] = {}  # (size, sha256) -> paths of regular files
        if self.options.match == "any-path":
            for path, node in fs.files():
                assert node.content is not None
                by_content.setdefault((node.content.size, node.content.sha256), []).append(path)
            largest = max((size for size, _ in by_content), default=0)
        else:
            twin_nodes = {c.path: node_at(fs, c.path[: -len(c.suffix)]) for c in candidates}
            candidates = [c for c in candidates if _is_regular(twin_nodes[c.path])]
            largest = max((n.size for n in twin_nodes.values() if n is not None), default=0)
        if not candidates:
            return
        # Output larger than the largest possible twin can match nothing: that bounds every decompression.
        limits = Limits(min(self.options.max_size, largest), self.options.max_ratio)
        decoded = self._decode(ctx, candidates, limits)
        matched: dict[str, tuple[_Candidate, list[str]]] = {}
        for candidate in candidates:
            assert candidate.node.content is not None
            result: Decoded | BaseException | None = decoded[(candidate.node.content.sha256, candidate.codec)]
            size = candidate.node.size
            if (
                isinstance(result, LimitExceeded)
                and min(self.options.max_size, self.options.max_ratio * max(size, 1)) > limits.max_output
            ):
                result = None  # larger than any twin: simply different
            if isinstance(result, BaseException):
                what = "not decompressed" if isinstance(result, LimitExceeded) else "does not decompress"
                ctx.note(candidate.path, "kept", f"{what}: {result}", size, size, codec=candidate.codec)
                continue
            twins = self._twins(fs, candidate, result, by_content) if result is not None else []
            if twins:
                matched[candidate.path] = (candidate, twins)
            elif self.options.match == "same-dir":
                plain = candidate.path[: -len(candidate.suffix)]
                ctx.note(candidate.path, "kept", f"differs from /{plain}", size, size, codec=candidate.codec)
        if not matched:
            return
        servers = self._servers(ctx)
        for path in sorted(matched):
            candidate, twins = matched[path]
            # A twin that is itself deleted here cannot stand for the content.
            usable = [t for t in twins if t not in matched]
            twin = next((t for t in usable if self._verified(fs, candidate, t, limits)), None)
            if twin is not None:
                self._remove(ctx, candidate, twin, servers)
        packages.update_records(ctx)

    def _servers(self, ctx: PassContext) -> Served:
        # Imported here: reading servers (and importing their parsers, YAML's among them) is needed only when
        # a twin matched, and most images have none.
        from passes.servers import Served, served

        if not self.options.servers:
            return Served()
        found = served(ctx.fs, ctx.image.config)
        for note in found.notes:
            ctx.warn(note)
        return found

    def _decode(
        self, ctx: PassContext, candidates: list[_Candidate], limits: Limits
    ) -> dict[tuple[str, str], Decoded | BaseException]:
        """Decompress each distinct (content, codec) once, on every core; one batch per codec."""
        batches: dict[str, dict[tuple[str, str], Content]] = {}
        for candidate in candidates:
            assert candidate.node.content is not None
            key = (candidate.node.content.sha256, candidate.codec)
            batches.setdefault(candidate.codec, {})[key] = candidate.node.content
        decoded: dict[tuple[str, str], Decoded | BaseException] = {}
        for codec in sorted(batches):
            for key, result in ctx.map(digest_decompressed, list(batches[codec].items()), (codec, limits)):
                decoded[key] = result
        return decoded

    def _candidates(self, fs: FileSystem) -> list[_Candidate]:
        out = []
        for path, node in fs.files():
            suffix = "." + path.rsplit(".", 1)[-1] if "." in path.rsplit("/", 1)[-1] else ""
            codec = CODECS.get(suffix.lower())
            if codec is None or len(path.rsplit("/", 1)[-1]) <= len(suffix) or node.content is None:
                continue
            out.append(_Candidate(path, node, suffix, codec))
        return out

    def _twins(
        self,
        fs: FileSystem,
        candidate: _Candidate,
        decoded: Decoded,
        by_content: dict[tuple[int, str], list[str]],
    ) -> list[str]:
        if self.options.match == "same-dir":
            twin_path = candidate.path[: -len(candidate.suffix)]
            node = node_at(fs, twin_path)
            if (
                node is not None
                and node.content is not None
                and (node.content.size, node.content.sha256)
                == (
                    decoded.size,
                    decoded.sha256,
                )
            ):
                return [twin_path]
            return []
        same = by_content.get((decoded.size, decoded.sha256), [])
        return [p for p in same if p != candidate.path and _inode(fs, p) != candidate.node.inode]

    def _verified(self, fs: FileSystem, candidate: _Candidate, twin: str, limits: Limits) -> bool:
        node = node_at(fs, twin)
        if node is None or node.content is None or candidate.node.content is None:
            return False
        try:
            return same_decompressed(candidate.codec, candidate.node.content, node.content, limits)
        except (CorruptStream, LimitExceeded):
            return False

    def _remove(self, ctx: PassContext, candidate: _Candidate, twin: str, servers: Served) -> None:
        path, size = candidate.path, candidate.node.size
        reason = f"same content as /{twin}"
        details: dict[str, Any] = {"codec": candidate.codec, "twin": "/" + twin}
        kept = self._kept_by_glob(path) or servers.keeps(path, candidate.suffix)
        if kept:
            ctx.note(path, "kept", f"{reason}; {kept}", size, size, **details)
            return
        if ctx.fs.is_protected(path):
            ctx.note(path, "kept", f"{reason}; protected layer", size, size, **details)
            return
        if packaged := packages.kept_reason(ctx, path):
            ctx.note(path, "kept", f"{reason}; {packaged}", size, size, **details)
            return
        # paths_of walks every path: ask only when a hardlink shares the inode (many deletions were quadratic)
        inode = candidate.node.inode
        others = [p for p in ctx.fs.paths_of(inode) if p != path] if ctx.fs.links(inode) else []
        if others:
            ctx.note(path, "kept", f"{reason}; hardlinked as /{others[0]}", size, size, **details)
            return
        try:
            ctx.changes.delete(path, reason)
        except Exception as error:  # ChangeRefused: hardlinked from another layer and the like
            ctx.note(path, "kept", f"{reason}; {error}", size, size, **details)
            return
        saved = size if candidate.node.entry.kind is EntryKind.FILE else 0
        ctx.note(path, "deleted", reason, saved, 0, **details)

    def _kept_by_glob(self, path: str) -> str | None:
        for glob in self.options.keep:
            if fnmatch.fnmatchcase("/" + path, glob) or fnmatch.fnmatchcase(path, glob):
                return f"--keep {glob}"
        return None


def _inode(fs: FileSystem, path: str) -> int:
    node = fs.get(path)
    return node.inode if node is not None else -1


def _is_regular(node: Node | None) -> bool:
    return node is not None and node.content is not None

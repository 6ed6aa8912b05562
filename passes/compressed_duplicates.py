"""Pass ``compressed-duplicates``: delete compressed files whose decompressed bytes are already in the image.

Layers are compressed already, so ``foo.gz`` next to ``foo`` with the same content costs its size twice for
nothing. A ``.gz``, ``.bz2``, ``.xz``, ``.lzma``, ``.zst``, ``.br`` or ``.lz4`` file is deleted when its
decompressed content equals, byte for byte, a regular file of the final image: by default its twin in the same
directory under the name without the suffix; with ``--duplicates any-path`` any file with the same content.

Decompression is streamed (nothing is held whole), bounded by the size of the largest possible twin, by
``--duplicates-max-size`` and by a ratio to the compressed size, so bombs cost little; a file that does not
decompress cleanly (corrupt, truncated, trailing garbage, wrong magic) is left alone. A match found by digest
is verified by comparing the decompressed stream with the twin byte for byte before the deletion is recorded.

Precompressed files that a web server serves on purpose are kept: the image's nginx configuration
(``/etc/nginx/nginx.conf`` and what it includes, or every file under ``/etc/nginx`` when there is no
``nginx.conf``) is parsed (``passes.servers``), and ``.gz`` files under the ``root``/``alias`` of a context with
``gzip_static`` on (``.br`` with ``brotli_static``) are kept; when a context with it on has no root we can read
(none set, variables), every such file is kept, with a warning. ``--keep GLOB`` keeps files for any other server.

It never deletes the twin, a symlink, a file hardlinked from another layer, or anything in a protected layer
(reported as kept). Decompression is ``passes.decompression``'s (``zstandard``, ``brotli`` 1.2+ and ``lz4``).
"""

from __future__ import annotations

import argparse
import fnmatch
from dataclasses import dataclass
from typing import Literal

from optimizer.filesystem import FileSystem, Node
from optimizer.model import Content, EntryKind
from optimizer.pipeline import PassContext
from passes.decompression import (
    CODECS,
    CorruptStream,
    Decoded,
    LimitExceeded,
    Limits,
    digest_decompressed,
    same_decompressed,
)
from passes.servers import NginxStatic, nginx_static
from passes.servers.files import node_at

__all__ = ["CompressedDuplicates", "CompressedDuplicatesOptions"]


@dataclass(frozen=True)
class CompressedDuplicatesOptions:
    """match: "same-dir" (twin = same name without the suffix) or "any-path" (same content anywhere).
    keep: globs of paths never deleted (matched against "/path" and "path"; ``*`` crosses ``/``).
    max_size: decompressed bytes read per file at most; max_ratio: decompressed per compressed byte at most.
    nginx: keep what the image's nginx serves with gzip_static/brotli_static."""

    match: Literal["same-dir", "any-path"] = "same-dir"
    keep: tuple[str, ...] = ()
    nginx: bool = True
    max_size: int = 1 << 30
    max_ratio: int = 1100


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
    matches are verified byte for byte; nginx ``gzip_static``/``brotli_static`` roots and ``--keep`` globs are
    kept; protected layers are reported, never changed.
    """

    name = "compressed-duplicates"
    summary = "Delete compressed files (.gz .bz2 .xz .zst .br .lz4) whose content is already in the image"
    Options = CompressedDuplicatesOptions

    def __init__(self, options: CompressedDuplicatesOptions) -> None:
        self.options = options

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        defaults = CompressedDuplicatesOptions()
        parser.add_argument(
            "--duplicates",
            dest="duplicates_match",
            choices=("same-dir", "any-path"),
            default=defaults.match,
            help="where the twin may be: same-dir (FILE.gz beside FILE; default) or any-path (same bytes)",
        )
        parser.add_argument(
            "--keep",
            "--duplicates-keep",
            dest="duplicates_keep",
            action="append",
            default=[],
            metavar="GLOB",
            help="never delete compressed files matching GLOB (repeatable; for servers other than nginx)",
        )
        parser.add_argument(
            "--duplicates-ignore-nginx",
            dest="duplicates_nginx",
            action="store_false",
            help="delete duplicates even where nginx gzip_static/brotli_static serves them",
        )
        parser.add_argument(
            "--duplicates-max-size",
            dest="duplicates_max_size",
            type=int,
            default=defaults.max_size,
            metavar="BYTES",
            help=f"decompress at most BYTES per file (default {defaults.max_size})",
        )
        parser.add_argument(
            "--duplicates-max-ratio",
            dest="duplicates_max_ratio",
            type=int,
            default=defaults.max_ratio,
            metavar="N",
            help=f"give up past N decompressed bytes per compressed byte (default {defaults.max_ratio})",
        )

    @classmethod
    def options_from_args(cls, args: argparse.Namespace) -> CompressedDuplicatesOptions:
        defaults = CompressedDuplicatesOptions()
        return CompressedDuplicatesOptions(
            match=getattr(args, "duplicates_match", defaults.match),
            keep=tuple(getattr(args, "duplicates_keep", None) or ()),
            nginx=getattr(args, "duplicates_nginx", defaults.nginx),
            max_size=getattr(args, "duplicates_max_size", defaults.max_size),
            max_ratio=getattr(args, "duplicates_max_ratio", defaults.max_ratio),
        )

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
        served = nginx_static(fs) if self.options.nginx else NginxStatic()
        for note in served.notes:
            ctx.warn(f"nginx: {note}")
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
        for path in sorted(matched):
            candidate, twins = matched[path]
            # A twin that is itself deleted here cannot stand for the content.
            usable = [t for t in twins if t not in matched]
            twin = next((t for t in usable if self._verified(fs, candidate, t, limits)), None)
            if twin is not None:
                self._remove(ctx, candidate, twin, served)

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

    def _remove(self, ctx: PassContext, candidate: _Candidate, twin: str, served: NginxStatic) -> None:
        path, size = candidate.path, candidate.node.size
        reason = f"same content as /{twin}"
        details = {"codec": candidate.codec, "twin": "/" + twin}
        kept = self._kept_by_glob(path) or served.keeps(path, candidate.suffix)
        if kept:
            ctx.note(path, "kept", f"{reason}; {kept}", size, size, **details)
            return
        if ctx.fs.is_protected(path):
            ctx.note(path, "kept", f"{reason}; protected layer", size, size, **details)
            return
        others = [p for p in ctx.fs.paths_of(candidate.node.inode) if p != path]
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

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
``nginx.conf``) is parsed, and ``.gz`` files under the ``root``/``alias`` of a context with ``gzip_static`` on
(``.br`` with ``brotli_static``) are kept; when a context with it on has no root we can read (none set,
variables), every such file is kept, with a warning. ``--keep GLOB`` keeps files for any other server.

It never deletes the twin, a symlink, a file hardlinked from another layer, or anything in a protected layer
(reported as kept). It needs ``zstandard``, ``brotli`` (1.2+, for bounded output) and ``lz4``.
"""

from __future__ import annotations

import argparse
import bz2
import fnmatch
import gzip
import hashlib
import io
import lzma
import posixpath
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import brotli
import lz4.frame
import zstandard

from optimizer.filesystem import FileSystem, Node
from optimizer.model import Content, EntryKind
from optimizer.pipeline import PassContext

__all__ = [
    "CODECS",
    "CompressedDuplicates",
    "CompressedDuplicatesOptions",
    "CorruptStream",
    "Decoded",
    "LimitExceeded",
    "NginxStatic",
    "decompressed_chunks",
    "digest_decompressed",
    "nginx_static",
]

CHUNK = 1 << 16
# suffix -> codec; the codec checks its own magic where the format has one.
CODECS: dict[str, str] = {
    ".gz": "gzip",
    ".bz2": "bzip2",
    ".xz": "xz",
    ".lzma": "lzma",
    ".zst": "zstd",
    ".br": "brotli",
    ".lz4": "lz4",
}
_MAGICS: dict[str, tuple[bytes, ...]] = {
    "gzip": (b"\x1f\x8b",),
    "bzip2": (b"BZh",),
    "xz": (b"\xfd7zXZ\x00",),
    "lzma": (b"\x5d\x00\x00",),
    "zstd": (b"\x28\xb5\x2f\xfd",),
    "lz4": (b"\x04\x22\x4d\x18",),
    "brotli": (b"",),
}


class CorruptStream(Exception):
    """The file does not decompress cleanly."""


class LimitExceeded(Exception):
    """Decompressing would go past the size or ratio limit (a bomb, or simply larger than any twin)."""


@dataclass(frozen=True)
class Decoded:
    size: int
    sha256: str


@dataclass(frozen=True)
class Limits:
    max_output: int  # bytes of decompressed output, at most
    max_ratio: int  # decompressed bytes per compressed byte, at most


def _reader_chunks(reader: io.BufferedIOBase | lz4.frame.LZ4FrameFile) -> Iterator[bytes]:
    while chunk := reader.read(CHUNK):
        yield chunk


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...
    @property
    def needs_input(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int = -1) -> bytes: ...


def _stream_chunks(make: Callable[[], _Decompressor], data: bytes, padding: bool) -> Iterator[bytes]:
    # One decompressor per concatenated stream; bytes after the last one must be another valid stream
    # (or, for xz, stream padding of zero bytes). The file readers of bz2 and lzma ignore trailing garbage.
    pending = data
    while True:
        decoder = make()
        out = decoder.decompress(pending, max_length=CHUNK)
        while True:
            if out:
                yield out
            if decoder.eof:
                break
            if decoder.needs_input:
                raise CorruptStream("truncated stream")
            out = decoder.decompress(b"", max_length=CHUNK)
        pending = decoder.unused_data
        if not pending or (padding and not pending.strip(b"\0") and len(pending) % 4 == 0):
            return


def _zstd_chunks(data: bytes) -> Iterator[bytes]:
    # Small input steps bound the output of each call; every frame must reach its end (else: truncated).
    view = memoryview(data)
    position = 0
    while position < len(view):
        decoder = zstandard.ZstdDecompressor().decompressobj(write_size=CHUNK)
        while not decoder.eof:
            if position >= len(view):
                raise CorruptStream("truncated zstd frame")
            step = bytes(view[position : position + 512])
            position += len(step)
            out = decoder.decompress(step)
            if out:
                yield out
        position -= len(decoder.unused_data)


def _brotli_chunks(data: bytes) -> Iterator[bytes]:
    decoder = brotli.Decompressor()
    view = memoryview(data)
    position = 0
    while not decoder.is_finished():
        step = b""
        if position < len(view) and decoder.can_accept_more_data():
            step = bytes(view[position : position + CHUNK])
            position += len(step)
        out = decoder.process(step, output_buffer_limit=CHUNK)
        if out:
            yield out
        elif not step:
            raise CorruptStream("truncated brotli stream")
    if position < len(view):
        raise CorruptStream("data after the end of the brotli stream")


def decompressed_chunks(codec: str, data: bytes) -> Iterator[bytes]:
    """The decompressed content of ``data`` in bounded chunks; ``CorruptStream`` when it is not clean."""
    if not any(data.startswith(magic) for magic in _MAGICS[codec]):
        raise CorruptStream(f"not a {codec} stream (magic bytes)")
    try:
        if codec == "gzip":
            yield from _reader_chunks(gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb"))
        elif codec == "bzip2":
            yield from _stream_chunks(bz2.BZ2Decompressor, data, padding=False)
        elif codec == "xz":
            yield from _stream_chunks(lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ), data, padding=True)
        elif codec == "lzma":
            yield from _stream_chunks(lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE), data, padding=False)
        elif codec == "zstd":
            yield from _zstd_chunks(data)
        elif codec == "brotli":
            yield from _brotli_chunks(data)
        elif codec == "lz4":
            yield from _reader_chunks(lz4.frame.LZ4FrameFile(io.BytesIO(data), mode="rb"))
        else:
            raise CorruptStream(f"unknown codec {codec}")
    except (
        OSError,
        EOFError,
        lzma.LZMAError,
        zstandard.ZstdError,
        brotli.error,
        RuntimeError,
        ValueError,
    ) as error:
        raise CorruptStream(f"{codec}: {error}") from error


def _bounded(codec: str, data: bytes, limits: Limits) -> Iterator[bytes]:
    bound = min(limits.max_output, limits.max_ratio * max(len(data), 1))
    total = 0
    for chunk in decompressed_chunks(codec, data):
        total += len(chunk)
        if total > bound:
            raise LimitExceeded(f"more than {bound} bytes decompressed")
        yield chunk


def digest_decompressed(data: bytes, job: tuple[str, Limits]) -> Decoded:
    """Size and SHA-256 of the decompressed content (a worker function: nothing is kept in memory)."""
    codec, limits = job[0], job[1]
    digest = hashlib.sha256()
    size = 0
    for chunk in _bounded(codec, data, limits):
        digest.update(chunk)
        size += len(chunk)
    return Decoded(size, digest.hexdigest())


def same_decompressed(codec: str, compressed: Content, twin: Content, limits: Limits) -> bool:
    """Byte-for-byte comparison of the decompressed stream with the twin's bytes, both streamed."""
    with twin.open() as reader:
        for chunk in _bounded(codec, compressed.read_bytes(), limits):
            if reader.read(len(chunk)) != chunk:
                return False
        return reader.read(1) == b""


# -- nginx ---------------------------------------------------------------------------------------------------

_NGINX_CONF_DIRS = (
    "etc/nginx",
    "usr/local/nginx/conf",
    "usr/local/openresty/nginx/conf",
    "opt/bitnami/nginx/conf",
)
_TOKEN = re.compile(
    r"""\s+|#[^\n]*|"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|([{};])|((?:[^\s{};"'\\]|\\.)+)"""
)
_MAX_INCLUDE_DEPTH = 16


@dataclass
class _Directive:
    name: str
    args: list[str]
    block: list[_Directive] | None = None


@dataclass
class NginxStatic:
    """What the image's nginx serves precompressed: the roots per suffix, and suffixes kept everywhere."""

    roots: dict[str, set[str]] = field(default_factory=lambda: {".gz": set(), ".br": set()})
    keep_all: set[str] = field(default_factory=set)  # suffixes kept everywhere (roots we cannot tell)
    files: list[str] = field(default_factory=list)  # configuration files read
    notes: list[str] = field(default_factory=list)

    def keeps(self, path: str, suffix: str) -> str | None:
        """The reason to keep ``path`` (with ``suffix``), or None."""
        if suffix in self.keep_all:
            return f"nginx {_STATIC[suffix]} is on and its root cannot be told"
        for root in sorted(self.roots.get(suffix, ())):
            if not root or path == root or path.startswith(root + "/"):
                return f"served by nginx {_STATIC[suffix]} from /{root}"
        return None


_STATIC = {".gz": "gzip_static", ".br": "brotli_static"}


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    for match in _TOKEN.finditer(text):
        double, single, punct, word = match.groups()
        if double is not None:
            out.append(double)
        elif single is not None:
            out.append(single)
        elif punct is not None:
            out.append(punct)
        elif word is not None:
            out.append(word)
    return out


def _parse(tokens: list[str], position: int = 0, depth: int = 0) -> tuple[list[_Directive], int]:
    directives: list[_Directive] = []
    words: list[str] = []
    while position < len(tokens):
        token = tokens[position]
        position += 1
        if token == ";":
            if words:
                directives.append(_Directive(words[0], words[1:]))
            words = []
        elif token == "{":
            if depth > 64:
                raise ValueError("blocks nested too deep")
            block, position = _parse(tokens, position, depth + 1)
            directives.append(_Directive(words[0] if words else "", words[1:], block))
            words = []
        elif token == "}":
            return directives, position
        else:
            words.append(token)
    return directives, position


def _read_text(fs: FileSystem, path: str) -> str | None:
    node = _find(fs, path)
    if node is None or node.content is None or node.content.size > 4 << 20:
        return None
    return node.content.read_bytes().decode("utf-8", errors="replace")


def _expand_includes(
    fs: FileSystem, directives: list[_Directive], conf_dir: str, result: NginxStatic, depth: int
) -> list[_Directive]:
    out: list[_Directive] = []
    for directive in directives:
        if directive.name == "include" and directive.block is None and directive.args:
            pattern = (
                directive.args[0].lstrip("/")
                if directive.args[0].startswith("/")
                else posixpath.join(conf_dir, directive.args[0])
            )
            pattern = posixpath.normpath(pattern)
            matches = sorted(p for p in _config_paths(fs, pattern) if fnmatch.fnmatchcase(p, pattern))
            for path in matches:
                if depth >= _MAX_INCLUDE_DEPTH:
                    result.notes.append(f"/{path}: includes nested too deep; not read")
                    continue
                out.extend(_load(fs, path, conf_dir, result, depth + 1))
            continue
        if directive.block is not None:
            directive = _Directive(
                directive.name, directive.args, _expand_includes(fs, directive.block, conf_dir, result, depth)
            )
        out.append(directive)
    return out


def _config_paths(fs: FileSystem, pattern: str) -> list[str]:
    # Glob only in the pattern's directory: the part before the first wildcard.
    fixed = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    directory = fixed.rsplit("/", 1)[0] if "/" in fixed else ""
    if fixed == pattern:
        return [pattern] if _find(fs, pattern) is not None else []
    resolved = fs.resolve(directory) if directory else ""
    if resolved is None:
        return []
    found = []
    for child in fs.children(resolved):
        name = child.rsplit("/", 1)[-1]
        found.append(f"{directory}/{name}" if directory else name)
    return found


def _load(fs: FileSystem, path: str, conf_dir: str, result: NginxStatic, depth: int) -> list[_Directive]:
    text = _read_text(fs, path)
    if text is None:
        return []
    result.files.append("/" + path)
    try:
        directives, _ = _parse(_tokens(text))
    except (ValueError, IndexError) as error:
        result.notes.append(f"/{path}: cannot parse ({error}); precompressed files kept")
        result.keep_all.update(_STATIC)
        return []
    return _expand_includes(fs, directives, conf_dir, result, depth)


@dataclass(frozen=True)
class _Scope:
    root: str | None
    gzip: bool
    brotli: bool


def _flag(directives: Sequence[_Directive], name: str, inherited: bool) -> bool:
    for directive in directives:
        if directive.name == name and directive.block is None and directive.args:
            return directive.args[0].lower() in ("on", "always")
    return inherited


def _walk(
    directives: Sequence[_Directive], scope: _Scope, kind: str, result: NginxStatic, where: str
) -> None:
    root = scope.root
    for directive in directives:
        if directive.block is None and directive.name in ("root", "alias") and directive.args:
            root = directive.args[0]
    here = _Scope(
        root, _flag(directives, "gzip_static", scope.gzip), _flag(directives, "brotli_static", scope.brotli)
    )
    children = [d for d in directives if d.block is not None]
    catch_all = any(d.name == "location" and d.args[-1:] == ["/"] for d in children)
    serves = kind == "location" or (kind == "server" and not catch_all)
    if serves:
        for suffix, on in ((".gz", here.gzip), (".br", here.brotli)):
            if not on:
                continue
            if here.root is None or "$" in here.root or not here.root.startswith("/"):
                result.keep_all.add(suffix)
                result.notes.append(f"{where}: {_STATIC[suffix]} on with root {here.root or '(default)'}")
            else:
                result.roots[suffix].add(posixpath.normpath(here.root).strip("/"))
    for child in children:
        assert child.block is not None
        _walk(child.block, here, child.name, result, where)


def nginx_static(fs: FileSystem) -> NginxStatic:
    """Where the image's nginx serves precompressed ``.gz``/``.br`` files (gzip_static/brotli_static)."""
    result = NginxStatic()
    for conf_dir in _NGINX_CONF_DIRS:
        if not fs.is_directory(conf_dir):
            continue
        main = f"{conf_dir}/nginx.conf"
        if _find(fs, main) is not None:
            _walk(
                _load(fs, main, conf_dir, result, 0), _Scope(None, False, False), "main", result, "/" + main
            )
            continue
        # No main file: read every file under the directory on its own (snippets meant for an include).
        for path, node in fs.files():
            if path.startswith(conf_dir + "/") and node.size <= 4 << 20:
                text = _read_text(fs, path)
                if text is None or "_static" not in text:
                    continue
                directives = _load(fs, path, conf_dir, result, 0)
                _walk(directives, _Scope(None, False, False), "server", result, "/" + path)
    for suffix in list(result.keep_all):
        result.roots[suffix].clear()
    return result


# -- the pass ------------------------------------------------------------------------------------------------


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
            twin_nodes = {c.path: _find(fs, c.path[: -len(c.suffix)]) for c in candidates}
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
            node = _find(fs, twin_path)
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
        node = _find(fs, twin)
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


def _find(fs: FileSystem, path: str) -> Node | None:
    """The node at ``path``, through symlinks; direct hits first (``lookup`` needs every parent's entry)."""
    node = fs.get(path)
    if node is not None and node.entry.kind is not EntryKind.SYMLINK:
        return node
    return fs.lookup(path)


def _inode(fs: FileSystem, path: str) -> int:
    node = fs.get(path)
    return node.inode if node is not None else -1


def _is_regular(node: Node | None) -> bool:
    return node is not None and node.content is not None

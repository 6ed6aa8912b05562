"""Reading a layer blob as a tar stream: our decompression, libarchive's tar parsing, errors carried through.

``LayerStream`` turns a layer blob into its plain tar stream. It decompresses what the media type declares
(gzip or zstd, with ISA-L or zlib (``inflate``) and libzstd, never guessing), refusing a blob whose first bytes
are another format; it hashes the plain stream as it goes (the layer's diff_id, checked against the config without a second read); and
it stops at the layer's ``Cap`` (``limits``) before the excess reaches memory or disk.

``TarArchive`` is libarchive reading that plain stream through a read callback. An exception raised inside the
callback (a digest mismatch at the end of the blob, a limit, a corrupt gzip member, Ctrl-C) cannot cross the C
frames: the callback keeps it and returns a fatal status, and the call into libarchive that saw the status
raises the original exception once libarchive has returned, instead of "Unrecognized archive format" and an
"Exception ignored" traceback.

libarchive is loaded on first use (``library``): a machine without it can still run ``--help`` and pure
repacks, and a run that must read a layer ends with ``RequiredToolNotFound`` naming the Debian package.
Nothing here writes anything.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
from collections.abc import Callable, Generator, Iterator
from types import ModuleType
from typing import Any, BinaryIO, TypeVar

import zstandard

from .errors import LayerError, RequiredToolNotFound
from .inflate import INFLATE_ERRORS, gunzip
from .limits import Cap
from .mediatypes import Compression, describe_compression, layer_compression, read_as, sniff_compression

__all__ = [
    "LIBARCHIVE_PACKAGE",
    "LayerStream",
    "Library",
    "TarArchive",
    "TarError",
    "library",
    "mislabelled_note",
]

LIBARCHIVE_PACKAGE = "libarchive13"
_BLOCK = 256 * 1024
_ZSTD_SLICE = 1024
_ARCHIVE_EOF = 1
_ARCHIVE_FATAL = -30
T = TypeVar("T")


class TarError(Exception):
    """libarchive refused the tar stream; ``msg`` is its message."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg


class Library:
    """libarchive-c's ``ffi`` module plus the UTF-8 and xattr accessors it does not bind."""

    def __init__(self, ffi: ModuleType) -> None:
        self.ffi = ffi
        self.ArchiveError: type[Exception] = ffi.ArchiveError
        entry = ctypes.c_void_p
        self.pathname_utf8 = self._bind("entry_pathname_utf8", [entry], ctypes.c_char_p)
        self.symlink_utf8 = self._bind("entry_symlink_utf8", [entry], ctypes.c_char_p)
        self.hardlink_utf8 = self._bind("entry_hardlink_utf8", [entry], ctypes.c_char_p)
        self.uname_utf8 = self._bind("entry_uname_utf8", [entry], ctypes.c_char_p)
        self.gname_utf8 = self._bind("entry_gname_utf8", [entry], ctypes.c_char_p)
        self.xattr_reset = self._bind("entry_xattr_reset", [entry], ctypes.c_int)
        self.xattr_next = self._bind(
            "entry_xattr_next",
            [
                entry,
                ctypes.POINTER(ctypes.c_char_p),
                ctypes.POINTER(ctypes.c_void_p),
                ctypes.POINTER(ctypes.c_size_t),
            ],
            ctypes.c_int,
        )

    def _bind(self, name: str, argtypes: list[Any], restype: Any) -> Any:
        function = getattr(self.ffi.libarchive, "archive_" + name, None)
        if function is not None:
            function.argtypes = argtypes
            function.restype = restype
        return function

    def version(self) -> str:
        return str(self.ffi.version_number())


_library: Library | None = None


def library() -> Library:
    """libarchive, loaded once; ``RequiredToolNotFound`` (exit 7) when the shared library is absent."""
    global _library
    if _library is None:
        try:
            import libarchive.ffi as ffi
        except (ImportError, OSError, AttributeError) as error:
            # libarchive-c loads the library at import: OSError for a bad path, AttributeError when
            # find_library found nothing and the process itself was searched for the symbols.
            raise RequiredToolNotFound(
                "libarchive", LIBARCHIVE_PACKAGE, f"read layers (loading it failed: {error})"
            ) from error
        _library = Library(ffi)
    return _library


class _Decoder:
    """A layer blob as pieces of plain tar: sniffed, decompressed as its media type says, counted against the
    cap, hashed. ``note`` says when the media type was tolerated rather than followed (``read_as``)."""

    def __init__(self, raw: BinaryIO, media_type: str, cap: Cap, where: str) -> None:
        self.raw = raw
        self.media_type = media_type
        self.compression = layer_compression(media_type) or Compression.NONE
        self.cap = cap
        self.where = where
        self.hash = hashlib.sha256()
        self.size = 0
        self.note = ""

    def pieces(self) -> Generator[bytes, None, None]:
        head = self.raw.read(_BLOCK)
        if head:
            found = sniff_compression(head)
            compression = read_as(self.media_type, found)
            if compression is None:
                raise LayerError(
                    f"{self.where}: the blob is {describe_compression(found)} but its media type "
                    f"{self.media_type} says {describe_compression(self.compression)}"
                )
            if compression is not self.compression:
                self.note = mislabelled_note(self.where, found, self.media_type)
                self.compression = compression
        try:
            for piece in self._decompressed(head):
                self.size += len(piece)
                self.cap.take(self.size, len(piece), self.where)
                self.hash.update(piece)
                yield piece
        except INFLATE_ERRORS as error:
            raise LayerError(f"{self.where}: corrupt gzip stream: {error}") from error
        except zstandard.ZstdError as error:
            raise LayerError(f"{self.where}: corrupt zstd stream: {error}") from error
        while self.raw.read(_BLOCK):  # reach the blob's end, where its digest is checked
            pass

    def _decompressed(self, head: bytes) -> Iterator[bytes]:
        if self.compression is Compression.GZIP:
            yield from self._gunzip(head)
        elif self.compression is Compression.ZSTD:
            yield from self._unzstd(head)
        else:
            piece = head
            while piece:
                yield piece
                piece = self.raw.read(_BLOCK)

    def _gunzip(self, data: bytes) -> Iterator[bytes]:
        """Every gzip member in turn (pigz and others write several), at most ``_BLOCK`` bytes at a time."""
        decompressor = gunzip()
        while True:
            if not data:
                data = decompressor.unconsumed_tail or self.raw.read(_BLOCK)
                if not data:
                    if not decompressor.eof:
                        raise LayerError(f"{self.where}: the gzip stream is truncated")
                    return
            if decompressor.eof:  # a member ended and more bytes follow: the next member
                decompressor = gunzip()
            piece = decompressor.decompress(data, _BLOCK)
            data = decompressor.unused_data if decompressor.eof else b""
            if piece:
                yield piece

    def _unzstd(self, data: bytes) -> Iterator[bytes]:
        """Every zstd frame in turn. The input goes in ``_ZSTD_SLICE`` bytes at a time: libzstd has no output
        bound per call, and a slice expands at most 32,768 times (RLE blocks). A frame cut short is an error
        (a stream reader would end silently)."""
        decompressor = zstandard.ZstdDecompressor().decompressobj()
        fed = False  # the current frame has started
        pending = memoryview(data)
        while True:
            if not pending:
                more = self.raw.read(_BLOCK)
                if not more:
                    if fed and not decompressor.eof:
                        raise LayerError(f"{self.where}: the zstd stream is truncated")
                    return
                pending = memoryview(more)
            if decompressor.eof:  # a frame ended and more bytes follow: the next frame
                decompressor = zstandard.ZstdDecompressor().decompressobj()
                fed = False
            piece = decompressor.decompress(pending[:_ZSTD_SLICE])
            pending = pending[_ZSTD_SLICE:]
            fed = True
            if decompressor.eof and decompressor.unused_data:
                pending = memoryview(bytes(decompressor.unused_data) + bytes(pending))
            if piece:
                yield piece


class LayerStream(io.RawIOBase):
    """The plain tar stream of a layer blob, decompressed as ``compression`` says, hashed, and capped.

    ``raw`` is the blob (a verifying reader: its digest is checked when it reaches its end); ``media_type`` says
    how it is compressed, and its first bytes must agree (``mediatypes.read_as``). After ``drain``
    (read to the end of both streams), ``diff_id`` is the sha256 of the plain stream and ``size`` its length.
    ``where`` names the image and layer in messages.
    """

    def __init__(self, raw: BinaryIO, media_type: str, cap: Cap, where: str) -> None:
        super().__init__()
        self._raw = raw
        self._decoder = _Decoder(raw, media_type, cap, where)
        self._pieces = self._decoder.pieces()
        self._pending = memoryview(b"")

    @property
    def diff_id(self) -> str:
        return "sha256:" + self._decoder.hash.hexdigest()

    @property
    def size(self) -> int:
        return self._decoder.size

    @property
    def note(self) -> str:
        """A warning when the blob was read otherwise than its media type says (tolerated, see ``read_as``)."""
        return self._decoder.note

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._pending:
            piece = next(self._pieces, b"")
            if not piece:
                return 0
            self._pending = memoryview(piece)
        view = memoryview(buffer).cast("B")
        count = min(len(view), len(self._pending))
        view[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def drain(self) -> None:
        """Read to the end: the rest of the plain stream is hashed, and the blob's digest is checked."""
        for _ in self._pieces:
            pass
        self._pending = memoryview(b"")

    def close(self) -> None:
        self._pieces.close()
        self._raw.close()
        super().close()


def mislabelled_note(where: str, found: Compression, media_type: str) -> str:
    return (
        f"{where}: the blob is {describe_compression(found)} under the media type {media_type}: read as it is "
        f"(Docker and containerd detect compression; OCI readers such as umoci trust the media type)"
    )


class TarArchive:
    """libarchive reading a plain tar from ``stream`` (anything with ``readinto``), one pass.

    ``entries()`` yields libarchive's entry pointer for each member (valid until the next one); ``read_data``
    copies the current member's bytes. Any exception the stream raised inside libarchive is raised again, as
    itself, by the call that was waiting on it.
    """

    def __init__(self, stream: Any, block_size: int = _BLOCK) -> None:
        self.lib = library()
        ffi = self.lib.ffi
        self._stream = stream
        self._carried: BaseException | None = None
        self._buffer = ctypes.create_string_buffer(block_size)
        self._view = memoryview(self._buffer).cast("B")
        self._address = ctypes.cast(self._buffer, ctypes.c_void_p).value
        self._callback = ffi.READ_CALLBACK(self._read)  # kept alive as long as libarchive may call it
        self._pointer = ffi.read_new()
        try:
            ffi.get_read_format_function("tar")(self._pointer)
            self._call(ffi.read_open, self._pointer, None, ffi.NO_OPEN_CB, self._callback, ffi.NO_CLOSE_CB)
        except BaseException:
            ffi.read_free(self._pointer)
            raise

    def _read(self, archive: int, context: int, pointer: Any) -> int:
        try:
            count = int(self._stream.readinto(self._view))
        except BaseException as error:  # carried out of the C frames, raised again by _call
            self._carried = error
            return _ARCHIVE_FATAL
        ctypes.cast(pointer, ctypes.POINTER(ctypes.c_void_p))[0] = self._address
        return count

    def _call(self, function: Callable[..., T], *args: Any) -> T:
        try:
            result = function(*args)
        except self.lib.ArchiveError as error:
            failure: BaseException = TarError(str(getattr(error, "msg", error)))
        else:
            if self._carried is None:
                return result
            failure = self._carried  # libarchive returned without noticing (it may ignore a short read)
        carried, self._carried = self._carried, None
        raise carried if carried is not None else failure

    def entries(self) -> Iterator[int]:
        ffi = self.lib.ffi
        entry = ctypes.c_void_p()
        while True:
            status = self._call(ffi.read_next_header, self._pointer, ctypes.byref(entry))
            if status == _ARCHIVE_EOF:
                return
            assert entry.value is not None
            yield entry.value

    def skip_data(self) -> None:
        """Consume the rest of the current member (its data and padding): nothing, if it was read."""
        self._call(self.lib.ffi.read_data_skip, self._pointer)

    def position(self) -> int:
        """Bytes of the tar stream libarchive has consumed."""
        return int(self.lib.ffi.filter_bytes(self._pointer, 0))

    def read_data(self, buffer: ctypes.Array[ctypes.c_char]) -> int:
        return int(self._call(self.lib.ffi.read_data, self._pointer, buffer, len(buffer)))

    def close(self) -> None:
        if self._pointer:
            self.lib.ffi.read_free(self._pointer)
            self._pointer = None

    def __enter__(self) -> TarArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

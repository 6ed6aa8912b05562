"""Helpers shared by the bench scripts: reading an OCI archive's layers, sizes, measuring a child process.

Nothing here imports ``optimizer``: the bench measures the project from the outside, the way a user runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import zstandard

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
BENCH_IMAGE = OUT / "bench-image.tar"
SMALL_IMAGE = OUT / "small-image.tar"
MANY_FILES_IMAGE = OUT / "many-files-image.tar"
CHUNK = 1 << 20

__all__ = [
    "BENCH_IMAGE",
    "CHUNK",
    "MANY_FILES_IMAGE",
    "OUT",
    "ROOT",
    "SMALL_IMAGE",
    "Layer",
    "Measured",
    "human",
    "image_layers",
    "measure",
    "open_member",
    "raw_stream",
]


def human(value: float) -> str:
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(amount) < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{value} B"


@dataclass(frozen=True)
class Layer:
    """One layer of an image in an OCI archive: its descriptor and the archive member holding its blob."""

    media_type: str
    digest: str
    size: int
    member: str
    created_by: str = ""

    @property
    def codec(self) -> str:
        if self.media_type.endswith("+gzip") or self.media_type.endswith(".gzip"):
            return "gzip"
        if self.media_type.endswith("+zstd") or self.media_type.endswith(".zstd"):
            return "zstd"
        return "none"


def _read(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.extractfile(name)
    if member is None:
        raise ValueError(f"{tar.name!r}: {name} is not a regular file")
    return member.read()


def image_layers(archive: Path) -> list[Layer]:
    """The layers of the (single) image manifest in an OCI archive, bottom first."""
    with tarfile.open(archive) as tar:
        names = {m.name.removeprefix("./") for m in tar.getmembers()}

        def blob(digest: str) -> bytes:
            name = "blobs/" + digest.replace(":", "/")
            if name not in names:
                raise ValueError(f"{archive}: blob {digest} is missing")
            found = "./" + name if ("./" + name) in tar.getnames() else name
            return _read(tar, found)

        index = json.loads(_read(tar, "index.json" if "index.json" in tar.getnames() else "./index.json"))
        descriptor: dict[str, Any] = index["manifests"][0]
        document = json.loads(blob(descriptor["digest"]))
        while "manifests" in document:  # nested index: take the first image
            document = json.loads(blob(document["manifests"][0]["digest"]))
        config = json.loads(blob(document["config"]["digest"]))
        history = [h for h in config.get("history", []) if not h.get("empty_layer")]
        layers = []
        for number, layer in enumerate(document["layers"]):
            created_by = str(history[number].get("created_by", "")) if number < len(history) else ""
            layers.append(
                Layer(
                    layer["mediaType"],
                    layer["digest"],
                    int(layer["size"]),
                    "blobs/" + layer["digest"].replace(":", "/"),
                    created_by,
                )
            )
        return layers


class _Member:
    """A member of an archive opened by name, closing the archive with it."""

    def __init__(self, archive: Path, name: str) -> None:
        self._tar = tarfile.open(archive)  # noqa: SIM115 - closed in close()
        try:
            member = self._tar.extractfile(name)
        except KeyError:
            member = self._tar.extractfile("./" + name)
        if member is None:
            raise ValueError(f"{archive}: {name} is not a regular file")
        self._member = member

    def read(self, size: int = -1) -> bytes:
        return self._member.read(size)

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> _Member:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_member(archive: Path, name: str) -> _Member:
    return _Member(archive, name)


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def raw_stream(reader: Readable, codec: str) -> Iterator[bytes]:
    """The decompressed bytes of a layer blob, in chunks of at most ``CHUNK`` input bytes."""
    if codec == "gzip":
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
        while chunk := reader.read(CHUNK):
            while chunk:
                yield inflater.decompress(chunk, CHUNK)
                chunk = inflater.unconsumed_tail
        yield inflater.flush()
    elif codec == "zstd":
        decompressor = zstandard.ZstdDecompressor().decompressobj()
        while chunk := reader.read(CHUNK):
            yield decompressor.decompress(chunk)
    else:
        while chunk := reader.read(CHUNK):
            yield chunk


@dataclass(frozen=True)
class Measured:
    seconds: float
    cpu_seconds: float  # user + system time of the child and the descendants it waited for
    max_rss: int  # bytes: the largest single process of the tree (getrusage of the waited child)
    tree_rss: int  # bytes: the largest sum of RSS over the whole process tree, sampled every 20 ms
    returncode: int
    stdout: str
    stderr: str


def _descendants(pid: int) -> list[int]:
    found = [pid]
    for current in found:
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    found.extend(int(x) for x in handle.read().split())
        except OSError:
            continue
    return found


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(command: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Measured:
    """Run ``command`` to completion: wall time, peak RSS of its largest process and of its whole tree."""
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=cwd)
        peak = 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, sum(_rss(p) for p in _descendants(process.pid)))
                stop.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - started
        stop.set()
        sampler.join()
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            seconds,
            usage.ru_utime + usage.ru_stime,
            usage.ru_maxrss * 1024,
            peak,
            process.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )

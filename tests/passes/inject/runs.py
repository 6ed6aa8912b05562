"""Running the ``inject`` pass in the tests: hand-made filesystems, one run and the filesystem after it,
the fixture images, and the real clients (a TLS server, busybox in a chroot) the functional tests use."""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import subprocess
import tarfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import certifi

from optimizer import settings
from optimizer.changes import Change, Op
from optimizer.filesystem import FileSystem
from optimizer.model import Entry, EntryKind
from optimizer.rebuild import apply_changes
from optimizer.report import PassReport
from passes.inject import Inject, InjectOptions
from passes.inject.zoneinfo import tzdata_zones
from tests.conftest import require_tool
from tests.imagetools import Layout, build_image, entry
from tests.passes import kit

Spec = tuple[Entry, bytes | None]


CERTIFI = Path(certifi.where()).read_bytes()


ZONES = tzdata_zones()


DEFAULT_ZONES = sorted(z for z in ZONES if z == "UTC" or z.startswith("Etc/"))


DEBIAN_BUNDLE = "etc/ssl/certs/ca-certificates.crt"


PEM = b"# a comment\n" + CERTIFI[CERTIFI.index(b"-----BEGIN CERTIFICATE-----") :]


def d(path: str, **fields: Any) -> Spec:
    return entry(path, EntryKind.DIR, **fields)


def f(path: str, data: bytes = b"x", **fields: Any) -> Spec:
    return entry(path, EntryKind.FILE, data, **fields)


def link(path: str, target: str) -> Spec:
    return entry(path, EntryKind.SYMLINK, link=target, mode=0o777)


def make_fs(tmp_path: Path, *layers: Sequence[Spec]) -> FileSystem:
    return kit.make_filesystem(tmp_path, layers)


class Run:
    """One run of the pass: what it recorded, the filesystem after it, its report."""

    def __init__(self, fs: FileSystem, changes: list[Change], report: PassReport) -> None:
        self.fs = fs
        self.changes = changes
        self.report = report
        # The core creates missing parent directories when it writes the top layer; the merged view a later
        # pass (or a second run) sees needs them too for symlink resolution.
        parents = sorted(
            {
                "/".join(c.path.split("/")[:i])
                for c in changes
                for i in range(1, c.path.count("/") + 1)
                if fs.get("/".join(c.path.split("/")[:i])) is None
            }
        )
        implied = [
            Change(Op.ADD, p, fs.layer_count, "test", "", 0, 0, None, Entry(p, EntryKind.DIR, mode=0o755), p)
            for p in parents
        ]
        self.after = apply_changes(fs, [*implied, *changes])

    @property
    def added(self) -> dict[str, Change]:
        return {c.path: c for c in self.changes if c.op is Op.ADD}

    def text(self, path: str) -> str:
        node = self.after.lookup(path)
        assert node is not None and node.content is not None, path
        return node.content.read_bytes().decode()

    def data(self, path: str) -> bytes:
        node = self.after.lookup(path)
        assert node is not None and node.content is not None, path
        return node.content.read_bytes()


# What is added, and where, whatever needs it: most tests here are about that, on hand-made filesystems whose
# programs are stand-ins. What needs each kind is tested in test_evidence.py, on real programs.
UNNEEDED = InjectOptions(needed_only=False)


def run_inject(
    tmp_path: Path,
    fs: FileSystem,
    options: InjectOptions | None = None,
    config: Mapping[str, Any] | None = None,
    system: str = "linux",
) -> Run:
    image_config = {"os": system, "config": dict(config or {})}
    ctx = kit.run_pass(
        Inject(options or UNNEEDED), kit.context_for(fs, tmp_path, Inject.name, config=image_config)
    )
    return Run(fs, list(ctx.changes), ctx.report)


def parse(argv: list[str]) -> InjectOptions:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, InjectOptions, Inject.flag_prefix)
    options: InjectOptions = settings.from_args(InjectOptions, parser.parse_args(argv), Inject.flag_prefix)
    Inject(options)  # as the command line does: a bad zone or --ca-bundle is a usage error before any work
    return options


def top_layer(archive: Path) -> tuple[dict[str, tarfile.TarInfo], dict[str, bytes], dict[str, Any]]:
    layout = Layout(archive)
    [(_, manifest)] = layout.manifests()
    config = layout.json(manifest["config"]["digest"])
    import gzip
    import io

    data = gzip.decompress(layout.blob(manifest["layers"][-1]["digest"]))
    members: dict[str, tarfile.TarInfo] = {}
    contents: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            members[member.name] = member
            if member.isfile():
                reader = tar.extractfile(member)
                assert reader is not None
                contents[member.name] = reader.read()
    return members, contents, config


def distroless_image(fixtures: Path, path: Path, config: dict[str, Any]) -> Path:
    """An image whose one layer is the distroless rootfs fixture (its entries rewritten by the test helper)."""
    layer: list[Spec] = []
    with tarfile.open(fixtures / "images" / "distroless" / "static-debian11-rootfs.tar.gz") as tar:
        for member in tar:
            name = member.name.removeprefix("./").strip("/")
            if not name:
                continue
            common: dict[str, Any] = {
                "mode": member.mode,
                "uid": member.uid,
                "gid": member.gid,
                "mtime": int(member.mtime),
            }
            if member.isdir():
                layer.append(entry(name, EntryKind.DIR, **common))
            elif member.issym():
                layer.append(entry(name, EntryKind.SYMLINK, link=member.linkname, **common))
            elif member.isfile():
                reader = tar.extractfile(member)
                assert reader is not None
                layer.append(entry(name, EntryKind.FILE, reader.read(), **common))
    return build_image(path, [layer], {"config": config})


def skopeo_umoci_rootfs(archive: Path, workdir: Path) -> Path:
    skopeo = require_tool("skopeo", "skopeo")
    umoci = require_tool("umoci", "umoci")
    layout = workdir / "copied"
    command = [skopeo, "copy", "--quiet", f"oci-archive:{archive}", f"oci:{layout}:copied"]
    subprocess.run(command, check=True, capture_output=True, text=True)
    bundle = workdir / "bundle"
    rootless = [] if os.geteuid() == 0 else ["--rootless"]
    subprocess.run(
        [umoci, "unpack", *rootless, "--image", f"{layout}:copied", str(bundle)],
        check=True,
        capture_output=True,
        text=True,
    )
    return bundle / "rootfs"


class TlsServer:
    """Serves one TLS handshake on 127.0.0.1 with the test server certificate."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(connection, server_side=True) as tls:
                    tls.sendall(b"hello over verified TLS")
            except (ssl.SSLError, OSError):
                pass

    def close(self) -> None:
        self.socket.close()


def fetch(port: int, cafile: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return tls.recv(100)


def busybox(rootfs: Path, *args: str, tz: str | None = None, user: str | None = None) -> str:
    chroot = require_tool("chroot", "coreutils")
    env = {"PATH": "/bin"} | ({"TZ": tz} if tz else {})
    spec = [f"--userspec={user}"] if user else []
    command = [chroot, *spec, str(rootfs), "/bin/busybox", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def is_static(path: str) -> bool:
    """An ELF executable without a program interpreter runs in a chroot that has no libc."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as handle:
        return not any(segment["p_type"] == "PT_INTERP" for segment in ELFFile(handle).iter_segments())

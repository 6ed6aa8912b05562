"""Fixtures of the ``inject`` tests: the distroless filesystem, a test CA, an unpacked injected image."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from optimizer.filesystem import FileSystem, build_filesystem
from optimizer.layer import index_layer
from optimizer.mediatypes import OCI_LAYER_GZIP
from optimizer.model import Descriptor
from optimizer.source import BlobStore
from tests.conftest import missing, require_tool
from tests.imagetools import build_image
from tests.passes.inject.runs import TlsServer, d, f, is_static, skopeo_umoci_rootfs


@pytest.fixture(scope="module")
def distroless_fs(fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> FileSystem:
    """distroless/static-debian11 (root, nobody, nonroot; CA bundle; Debian tzdata) as the only layer."""
    path = fixtures / "images" / "distroless" / "static-debian11-rootfs.tar.gz"
    if not path.is_file():
        missing(f"fixture {path} not found")
    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    store = BlobStore("distroless")
    store.add_slice(digest, str(path), 0, len(data))
    spool = tmp_path_factory.mktemp("distroless") / "layer.pack"
    index = index_layer(
        store, Descriptor(OCI_LAYER_GZIP, digest, len(data)), str(spool), "distroless layer 1/1"
    )
    return build_filesystem([index.entries])


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost signed by it (openssl CLI)."""
    openssl = require_tool("openssl", "openssl")
    where = tmp_path_factory.mktemp("ca")
    paths = {k: where / f"{k}.pem" for k in ("ca", "ca-key", "server", "server-key", "server-csr")}
    ext = where / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        [openssl, "req", "-x509", *ec, "-keyout", paths["ca-key"], "-out", paths["ca"], "-days", "2",
         "-subj", "/CN=oci-optimizer inject test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", *ec, "-keyout", paths["server-key"], "-out", paths["server-csr"], "-subj", "/CN=localhost"],
        [openssl, "x509", "-req", "-in", paths["server-csr"], "-CA", paths["ca"], "-CAkey", paths["ca-key"],
         "-CAcreateserial", "-out", paths["server"], "-days", "2", "-extfile", ext],
    ]  # fmt: skip
    for command in commands:
        subprocess.run([str(c) for c in command], check=True, capture_output=True)
    return paths


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory, test_ca: dict[str, Path]) -> Path:
    """A scratch image (User 1000, TZ=Europe/Paris, files owned by nobody and 1000) through the CLI with
    --ca-bundle and --inject-unneeded, copied by skopeo and unpacked by umoci."""
    from optimizer.cli import main

    where = tmp_path_factory.mktemp("functional")
    layer = [
        d("data"),
        f("data/by-nobody", b"n", uid=65534, gid=65534),
        f("data/by-app", b"a", uid=1000, gid=0),
    ]
    source = build_image(where / "in.tar", [layer], {"config": {"User": "1000", "Env": ["TZ=Europe/Paris"]}})
    out = where / "out.tar"
    # Nothing in it needs a bundle or the default zones: --inject-unneeded adds them, for the clients to try.
    argv = [
        str(source),
        str(out),
        "--passes",
        "inject",
        "--ca-bundle",
        str(test_ca["ca"]),
        "--inject-unneeded",
        "-q",
    ]
    assert main(argv) == 0
    return skopeo_umoci_rootfs(out, where)


@pytest.fixture
def tls_server(test_ca: dict[str, Path]) -> Iterator[TlsServer]:
    server = TlsServer(test_ca["server"], test_ca["server-key"])
    yield server
    server.close()


@pytest.fixture(scope="module")
def with_busybox(unpacked: Path) -> Path:
    if os.geteuid() != 0:
        missing("chroot, and umoci unpacking with the image's owners, need root")
    if not os.path.isfile("/bin/busybox") or not is_static("/bin/busybox"):
        missing("a static /bin/busybox (Debian package busybox-static)")
    (unpacked / "bin").mkdir(exist_ok=True)
    shutil.copy2("/bin/busybox", unpacked / "bin" / "busybox")
    return unpacked

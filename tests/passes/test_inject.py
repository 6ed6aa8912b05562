"""The ``inject`` pass: nothing added where the files exist, the right files added where they do not, and the
result working for real clients (OpenSSL through Python's ``ssl``, ``zoneinfo``, a static busybox in a chroot)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import certifi
import pytest
import tzdata

from optimizer import Options, optimize
from optimizer.changes import Change, Changes, Op
from optimizer.errors import UsageError
from optimizer.filesystem import FileSystem, build_filesystem
from optimizer.layer import IndexedEntry, index_layer
from optimizer.mediatypes import OCI_LAYER_GZIP
from optimizer.model import Descriptor, Entry, EntryKind
from optimizer.pipeline import ImageInfo, PassContext, WorkerPool
from optimizer.rebuild import apply_changes
from optimizer.report import PassReport
from optimizer.source import BlobStore
from optimizer.spool import Spool
from passes.inject import (
    CA_BUNDLE_PATHS,
    ZONEINFO_DIR,
    Inject,
    InjectOptions,
    find_ca_certificates,
    parse_group,
    parse_passwd,
    tzdata_zones,
    validate_ca_bundle,
)
from tests.conftest import fixture, missing, require_tool
from tests.imagetools import Layout, build_image, entry

Spec = tuple[Entry, bytes | None]

CERTIFI = Path(certifi.where()).read_bytes()
ZONES = tzdata_zones()
DEFAULT_ZONES = sorted(z for z in ZONES if z == "UTC" or z.startswith("Etc/"))
DEBIAN_BUNDLE = "etc/ssl/certs/ca-certificates.crt"


# ----------------------------------------------------------------------------------------------------------
# Running the pass on hand-made and fixture filesystems


def d(path: str, **fields: Any) -> Spec:
    return entry(path, EntryKind.DIR, **fields)


def f(path: str, data: bytes = b"x", **fields: Any) -> Spec:
    return entry(path, EntryKind.FILE, data, **fields)


def link(path: str, target: str) -> Spec:
    return entry(path, EntryKind.SYMLINK, link=target, mode=0o777)


def make_fs(tmp_path: Path, *layers: Sequence[Spec]) -> FileSystem:
    spool = Spool(str(tmp_path / "layers.pack"))
    indexed = [
        [IndexedEntry(e, spool.store(data) if data is not None else None) for e, data in layer]
        for layer in layers
    ]
    return build_filesystem(indexed)


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


def run_inject(
    tmp_path: Path,
    fs: FileSystem,
    options: InjectOptions | None = None,
    config: Mapping[str, Any] | None = None,
    system: str = "linux",
) -> Run:
    spool = Spool(str(tmp_path / f"new-{len(list(tmp_path.iterdir()))}.pack"))
    report = PassReport(Inject.name)
    changes = Changes(fs, Inject.name, spool)
    image_config = {"os": system, "config": dict(config or {})}
    info = ImageInfo("test-image", "sha256:" + "0" * 64, None, image_config, [])
    ctx = PassContext(fs, changes, info, report, WorkerPool(1))
    Inject(options or InjectOptions()).run(ctx)
    return Run(fs, list(changes), report)


@pytest.fixture(scope="module")
def distroless_fs(fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> FileSystem:
    """distroless/static-debian11 (root, nobody, nonroot; CA bundle; Debian tzdata) as the only layer."""
    path = fixture("images/distroless/static-debian11-rootfs.tar.gz")
    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    store = BlobStore("distroless")
    store.add_slice(digest, str(path), 0, len(data))
    spool = tmp_path_factory.mktemp("distroless") / "layer.pack"
    index = index_layer(
        store, Descriptor(OCI_LAYER_GZIP, digest, len(data)), str(spool), "distroless layer 1/1"
    )
    return build_filesystem([index.entries])


# ----------------------------------------------------------------------------------------------------------
# Scratch: everything is added, in the Debian layout


def test_scratch_image_gets_certs_zones_and_accounts(tmp_path: Path) -> None:
    fs = make_fs(tmp_path, [f("hello", b"\x7fELF", mode=0o755)])
    run = run_inject(tmp_path, fs)
    zone_paths = {f"{ZONEINFO_DIR}/{z}" for z in DEFAULT_ZONES}
    assert set(run.added) == {DEBIAN_BUNDLE, "etc/ssl/cert.pem", "etc/passwd", "etc/group"} | zone_paths
    assert run.data(DEBIAN_BUNDLE) == CERTIFI
    assert run.added["etc/ssl/cert.pem"].entry.link == "certs/ca-certificates.crt"  # type: ignore[union-attr]
    assert run.data("etc/ssl/cert.pem") == CERTIFI
    for zone in DEFAULT_ZONES:
        assert (
            run.data(f"{ZONEINFO_DIR}/{zone}")
            == (Path(tzdata.__file__).parent / "zoneinfo" / zone).read_bytes()
        )
    users = {(u.name, u.uid, u.gid) for u in parse_passwd(run.text("etc/passwd"))}
    assert users == {("root", 0, 0), ("nobody", 65534, 65534)}
    assert "root:x:0:0:root:/root:/sbin/nologin" in run.text("etc/passwd")  # no /bin/sh in this image
    assert {(g.name, g.gid) for g in parse_group(run.text("etc/group"))} == {("root", 0), ("nogroup", 65534)}
    for change in run.changes:
        assert change.layer == fs.layer_count and change.reason
        assert change.entry is not None and change.entry.uid == 0 and change.entry.gid == 0
        if change.entry.kind is EntryKind.FILE:
            assert change.entry.mode == 0o644
    assert sorted(f.path for f in run.report.findings if f.action == "added") == sorted(run.added)
    assert run.report.warnings == []
    # The result has everything: a second run adds nothing.
    again = run_inject(tmp_path, run.after)
    assert again.changes == []
    assert {f.action for f in again.report.findings} == {"kept"}


def test_root_shell_is_bin_sh_when_the_image_has_one(tmp_path: Path) -> None:
    run = run_inject(
        tmp_path,
        make_fs(
            tmp_path, [f("bin/busybox", b"\x7fELF"), entry("bin/sh", EntryKind.HARDLINK, link="bin/busybox")]
        ),
    )
    assert run.text("etc/passwd").startswith("root:x:0:0:root:/root:/bin/sh\n")


def test_windows_images_are_left_alone(tmp_path: Path) -> None:
    run = run_inject(tmp_path, make_fs(tmp_path, [f("Files/hello.exe", b"MZ")]), system="windows")
    assert run.changes == []
    assert [(f.action, f.reason) for f in run.report.findings] == [
        ("kept", "a windows image: nothing to inject")
    ]


# ----------------------------------------------------------------------------------------------------------
# Distroless: it has everything


def test_distroless_gets_nothing(tmp_path: Path, distroless_fs: FileSystem) -> None:
    for config in (
        {},
        {"User": "65532", "Env": ["TZ=Europe/Paris"]},
        {"User": "nonroot:nonroot"},
        {"User": "0"},
    ):
        run = run_inject(tmp_path, distroless_fs, config=config)
        assert run.changes == [], config
        kept = {f.path: f.reason for f in run.report.findings if f.action == "kept"}
        assert DEBIAN_BUNDLE in kept and ZONEINFO_DIR in kept and "etc/passwd" in kept and "etc/group" in kept
        assert run.report.warnings == []


def test_distroless_unknown_user_extends_a_copy(tmp_path: Path, distroless_fs: FileSystem) -> None:
    old_passwd = distroless_fs.lookup("etc/passwd")
    old_group = distroless_fs.lookup("etc/group")
    assert old_passwd is not None and old_passwd.content is not None
    assert old_group is not None and old_group.content is not None
    before = (old_passwd.content.read_bytes(), old_group.content.read_bytes())
    run = run_inject(tmp_path, distroless_fs, config={"User": "app:builders"})
    assert set(run.added) == {"etc/passwd", "etc/group"}
    new_passwd, new_group = run.text("etc/passwd"), run.text("etc/group")
    assert new_passwd.startswith(before[0].decode()) and new_group.startswith(before[1].decode())
    app = [u for u in parse_passwd(new_passwd) if u.name == "app"]
    staff = [g for g in parse_group(new_group) if g.name == "builders"]
    assert len(app) == 1 and len(staff) == 1 and app[0].gid == staff[0].gid
    assert app[0].uid not in {u.uid for u in parse_passwd(before[0].decode())}
    assert f"app:x:{app[0].uid}:{app[0].gid}:app:/:/sbin/nologin\n" in new_passwd
    assert len(run.report.warnings) == 2 and all("test-image" in w for w in run.report.warnings)
    # The lower layer's bytes are untouched: the copies are new top-layer entries.
    assert (old_passwd.content.read_bytes(), old_group.content.read_bytes()) == before
    assert all(c.layer == distroless_fs.layer_count for c in run.changes)


def test_distroless_missing_tz_zone_is_added_alone(tmp_path: Path, distroless_fs: FileSystem) -> None:
    # Debian's tzdata has Europe/Paris but not every alias tzdata-the-package ships: find one it lacks.
    absent = [z for z in ZONES if distroless_fs.lookup(f"{ZONEINFO_DIR}/{z}") is None]
    if not absent:
        pytest.skip("the distroless zoneinfo has every zone of this tzdata")
    run = run_inject(tmp_path, distroless_fs, config={"Env": [f"TZ={absent[0]}"]})
    assert set(run.added) == {f"{ZONEINFO_DIR}/{absent[0]}"}


# ----------------------------------------------------------------------------------------------------------
# CA certificates: what counts as present, where the bundle goes


PEM = b"# a comment\n" + CERTIFI[CERTIFI.index(b"-----BEGIN CERTIFICATE-----") :]


@pytest.mark.parametrize(
    "layer, env",
    [pytest.param([f(path, PEM)], {}, id=path) for path in CA_BUNDLE_PATHS]
    + [
        pytest.param(
            [
                f("usr/share/ca-certificates/mozilla/x.crt", PEM),
                link("etc/ssl/certs/abcd1234.0", "/usr/share/ca-certificates/mozilla/x.crt"),
            ],
            {},
            id="hashed-directory",
        ),
        pytest.param(
            [
                f("usr/share/ca/bundle.pem", PEM),
                link("etc/ssl/certs/ca-certificates.crt", "../../../usr/share/ca/bundle.pem"),
            ],
            {},
            id="bundle-symlink",
        ),
        pytest.param(
            [f("opt/certs/roots.pem", PEM)], {"SSL_CERT_FILE": "/opt/certs/roots.pem"}, id="SSL_CERT_FILE"
        ),
        pytest.param(
            [f("opt/certs/roots.pem", PEM)], {"SSL_CERT_DIR": "/nowhere:/opt/certs"}, id="SSL_CERT_DIR"
        ),
        pytest.param(
            [f("usr/lib/ssl/certs/ca.pem", PEM), link("etc/ssl", "../usr/lib/ssl")],
            {},
            id="symlinked-etc-ssl",
        ),
    ],
)
def test_existing_certificates_are_found(tmp_path: Path, layer: list[Spec], env: dict[str, str]) -> None:
    config = {"Env": [f"{k}={v}" for k, v in env.items()]}
    run = run_inject(tmp_path, make_fs(tmp_path, layer), InjectOptions(zoneinfo=False, passwd=False), config)
    assert run.changes == []
    assert [f.action for f in run.report.findings] == ["kept"]


@pytest.mark.parametrize(
    "layer",
    [
        pytest.param([f(DEBIAN_BUNDLE, b"")], id="empty-bundle"),
        pytest.param([link(DEBIAN_BUNDLE, "/usr/share/ca-certificates/gone.crt")], id="dangling-symlink"),
        pytest.param([f("etc/ssl/certs/java/cacerts", b"\xfe\xed\xfe\xed")], id="java-keystore-only"),
        pytest.param([f("opt/certs/roots.pem", PEM), d("etc/ssl/certs")], id="bundle-nowhere-known"),
    ],
)
def test_no_usable_certificates_means_injection(tmp_path: Path, layer: list[Spec]) -> None:
    run = run_inject(tmp_path, make_fs(tmp_path, layer), InjectOptions(zoneinfo=False, passwd=False))
    assert DEBIAN_BUNDLE in run.added
    assert find_ca_certificates(run.after, {}) is not None


@pytest.mark.parametrize(
    "os_release, bundle, links",
    [
        ('ID=debian\nVERSION_ID="12"\n', DEBIAN_BUNDLE, {}),
        ("ID=ubuntu\nID_LIKE=debian\n", DEBIAN_BUNDLE, {}),
        ("ID=alpine\nVERSION_ID=3.20.0\n", DEBIAN_BUNDLE, {"etc/ssl/cert.pem": "certs/ca-certificates.crt"}),
        (
            'ID="rocky"\nID_LIKE="rhel centos fedora"\n',
            "etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
            {
                "etc/pki/tls/certs/ca-bundle.crt": "../../ca-trust/extracted/pem/tls-ca-bundle.pem",
                "etc/pki/tls/cert.pem": "../ca-trust/extracted/pem/tls-ca-bundle.pem",
            },
        ),
        ("ID=fedora\n", "etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", None),
        ('ID="opensuse-leap"\nID_LIKE="suse opensuse"\n', "etc/ssl/ca-bundle.pem", {}),
        ("ID=something-new\n", DEBIAN_BUNDLE, {"etc/ssl/cert.pem": "certs/ca-certificates.crt"}),
    ],
)
def test_bundle_goes_where_the_distribution_expects_it(
    tmp_path: Path, os_release: str, bundle: str, links: dict[str, str] | None
) -> None:
    # os-release as distributions ship it: /etc/os-release -> ../usr/lib/os-release
    fs = make_fs(
        tmp_path,
        [f("usr/lib/os-release", os_release.encode()), link("etc/os-release", "../usr/lib/os-release")],
    )
    run = run_inject(tmp_path, fs, InjectOptions(zoneinfo=False, passwd=False))
    assert run.data(bundle) == CERTIFI
    added_links = {
        p: c.entry.link for p, c in run.added.items() if c.entry and c.entry.kind is EntryKind.SYMLINK
    }
    if links is not None:
        assert added_links == links
    for path in added_links:
        assert run.data(path) == CERTIFI
    assert find_ca_certificates(run.after, {}) is not None


def test_openssl_directory_gets_a_cert_pem_link(tmp_path: Path) -> None:
    # Debian with the openssl package but without ca-certificates: Python's ssl reads /usr/lib/ssl/cert.pem.
    fs = make_fs(
        tmp_path,
        [f("etc/os-release", b"ID=debian\n"), d("usr/lib/ssl"), link("usr/lib/ssl/certs", "/etc/ssl/certs")],
    )
    run = run_inject(tmp_path, fs, InjectOptions(zoneinfo=False, passwd=False))
    assert run.added["usr/lib/ssl/cert.pem"].entry.link == "../../../etc/ssl/certs/ca-certificates.crt"  # type: ignore[union-attr]
    assert run.data("usr/lib/ssl/cert.pem") == CERTIFI


def test_symlinked_directories_are_followed(tmp_path: Path) -> None:
    fs = make_fs(tmp_path, [d("usr/lib/ssl"), link("etc/ssl", "../usr/lib/ssl")])
    run = run_inject(tmp_path, fs, InjectOptions(zoneinfo=False, passwd=False))
    assert set(run.added) == {"usr/lib/ssl/certs/ca-certificates.crt", "usr/lib/ssl/cert.pem"}
    assert run.data("etc/ssl/certs/ca-certificates.crt") == CERTIFI
    assert run.after.get("etc/ssl") is not None and run.after.get("etc/ssl").entry.kind is EntryKind.SYMLINK  # type: ignore[union-attr]


def test_a_file_in_the_way_is_a_warning(tmp_path: Path) -> None:
    run = run_inject(
        tmp_path,
        make_fs(tmp_path, [f("etc/ssl", b"not a directory")]),
        InjectOptions(zoneinfo=False, passwd=False),
    )
    assert run.changes == []
    [warning] = run.report.warnings  # the bundle could not go in, so neither does its cert.pem link
    assert "test-image: /etc/ssl/certs/ca-certificates.crt: not added" in warning


# ----------------------------------------------------------------------------------------------------------
# --ca-bundle


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


def test_ca_bundle_option_is_validated(tmp_path: Path, test_ca: dict[str, Path]) -> None:
    assert validate_ca_bundle(test_ca["ca"].read_bytes(), "ca") == 1
    assert validate_ca_bundle(CERTIFI, "certifi") == CERTIFI.count(b"-----BEGIN CERTIFICATE-----")
    bad = {
        "with-key.pem": test_ca["ca"].read_bytes() + test_ca["ca-key"].read_bytes(),
        "empty.pem": b"",
        "text.pem": b"hello\n",
        "corrupt.pem": test_ca["ca"].read_bytes().replace(b"\n", b"\nAAAA", 3),
        "csr.pem": test_ca["server-csr"].read_bytes(),
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UsageError, match=re.escape(name)):
            Inject(InjectOptions(ca_bundle=str(tmp_path / name)))
    with pytest.raises(UsageError, match=r"nowhere\.pem"):
        Inject(InjectOptions(ca_bundle=str(tmp_path / "nowhere.pem")))
    run = run_inject(
        tmp_path, make_fs(tmp_path, []), InjectOptions(ca_bundle=str(test_ca["ca"]), zoneinfo=False)
    )
    assert run.data(DEBIAN_BUNDLE) == test_ca["ca"].read_bytes()
    assert str(test_ca["ca"]) in run.added[DEBIAN_BUNDLE].reason


# ----------------------------------------------------------------------------------------------------------
# Zoneinfo


@pytest.mark.parametrize(
    "tz, extra, warned",
    [
        ("Europe/Paris", ["Europe/Paris"], False),
        (":America/New_York", ["America/New_York"], False),
        ("/usr/share/zoneinfo/Asia/Tokyo", ["Asia/Tokyo"], False),
        ("CET-1CEST,M3.5.0,M10.5.0/3", [], False),
        ("UTC", [], False),
        ("Mars/Olympus_Mons", [], True),
        ("../../etc/passwd", [], False),
    ],
)
def test_tz_of_the_config_is_added(tmp_path: Path, tz: str, extra: list[str], warned: bool) -> None:
    run = run_inject(
        tmp_path, make_fs(tmp_path, []), InjectOptions(certs=False, passwd=False), {"Env": [f"TZ={tz}"]}
    )
    assert set(run.added) == {f"{ZONEINFO_DIR}/{z}" for z in [*DEFAULT_ZONES, *extra]}
    assert bool(run.report.warnings) == warned


def test_zone_list_and_all(tmp_path: Path) -> None:
    fs = make_fs(tmp_path, [])
    listed = run_inject(
        tmp_path, fs, InjectOptions(certs=False, passwd=False, zones="Europe/Paris,Asia/Kolkata")
    )
    assert set(listed.added) == {
        f"{ZONEINFO_DIR}/{z}" for z in [*DEFAULT_ZONES, "Europe/Paris", "Asia/Kolkata"]
    }
    everything = run_inject(tmp_path, fs, InjectOptions(certs=False, passwd=False, zones="all"))
    assert {f"{ZONEINFO_DIR}/{z}" for z in ZONES} <= set(everything.added)
    assert f"{ZONEINFO_DIR}/zone1970.tab" in everything.added
    # The history comment is built from the reasons: the whole story once, short ones after it.
    reasons = [c.reason for c in sorted(listed.changes, key=lambda c: c.path)]
    assert "no /usr/share/zoneinfo" in reasons[0] and "Europe/Paris" in reasons[0]
    assert all(len(r) < 40 for r in reasons[1:])
    with pytest.raises(UsageError, match="Mars/Olympus_Mons"):
        Inject(InjectOptions(zones="Europe/Paris,Mars/Olympus_Mons"))


def test_existing_zoneinfo_only_gets_named_missing_zones(tmp_path: Path) -> None:
    fs = make_fs(tmp_path, [f(f"{ZONEINFO_DIR}/UTC", b"TZif2"), f(f"{ZONEINFO_DIR}/Europe/Paris", b"TZif2")])
    for config, zones, added in (
        ({"Env": ["TZ=Europe/Paris"]}, "default", set()),
        ({"Env": ["TZ=Europe/Berlin"]}, "default", {"Europe/Berlin"}),
        ({}, "all", set()),
        ({}, "Europe/Paris,Asia/Tokyo", {"Asia/Tokyo"}),
    ):
        run = run_inject(tmp_path, fs, InjectOptions(certs=False, passwd=False, zones=zones), config)
        assert set(run.added) == {f"{ZONEINFO_DIR}/{z}" for z in added}, (config, zones)


# ----------------------------------------------------------------------------------------------------------
# passwd and group


@pytest.mark.parametrize(
    "user, passwd_lines, group_lines, warnings",
    [
        ("", [], [], 0),
        ("root", [], [], 0),
        ("0:0", [], [], 0),
        ("65534", [], [], 0),
        ("1000", ["user1000:x:1000:0:user1000:/:/sbin/nologin"], [], 0),
        ("65532", ["nonroot:x:65532:0:nonroot:/:/sbin/nologin"], [], 0),
        ("65532:65532", ["nonroot:x:65532:65532:nonroot:/:/sbin/nologin"], ["nonroot:x:65532:"], 0),
        ("1000:nogroup", ["user1000:x:1000:65534:user1000:/:/sbin/nologin"], [], 0),
        ("app", ["app:x:1000:1000:app:/:/sbin/nologin"], ["app:x:1000:"], 1),
        ("app:root", ["app:x:1000:0:app:/:/sbin/nologin"], [], 1),
        ("app:staff", ["app:x:1000:1000:app:/:/sbin/nologin"], ["staff:x:1000:"], 2),
        ("bad name", [], [], 1),
        ("x\nroot2:x:0:0::/:/bin/sh", [], [], 1),
    ],
)
def test_config_user_gets_an_entry(
    tmp_path: Path, user: str, passwd_lines: list[str], group_lines: list[str], warnings: int
) -> None:
    base = [
        f("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/sbin/nologin"),
        f("etc/group", b"root:x:0:\nnogroup:x:65534:\n"),
    ]
    fs = make_fs(tmp_path, base)
    run = run_inject(tmp_path, fs, InjectOptions(certs=False, zoneinfo=False), {"User": user})
    if passwd_lines:
        expected = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/sbin/nologin\n"
        assert run.text("etc/passwd") == expected + "".join(line + "\n" for line in passwd_lines)
    else:
        assert "etc/passwd" not in run.added
    if group_lines:
        assert run.text("etc/group") == "root:x:0:\nnogroup:x:65534:\n" + "".join(
            line + "\n" for line in group_lines
        )
    else:
        assert "etc/group" not in run.added
    assert len(run.report.warnings) == warnings


def test_named_user_takes_the_owner_of_its_home(tmp_path: Path) -> None:
    fs = make_fs(tmp_path, [d("home/app", uid=1234, gid=2345)])
    run = run_inject(tmp_path, fs, InjectOptions(certs=False, zoneinfo=False), {"User": "app"})
    assert "app:x:1234:2345:app:/:/sbin/nologin\n" in run.text("etc/passwd")
    assert "app:x:2345:\n" in run.text("etc/group")
    assert "owner of /home/app" in run.report.warnings[0]


def test_passwd_through_a_symlink_keeps_mode_and_place(tmp_path: Path) -> None:
    fs = make_fs(
        tmp_path,
        [
            f("usr/lib/passwd", b"root:x:0:0::/:/bin/sh\n", mode=0o640),
            link("etc/passwd", "../usr/lib/passwd"),
            f("etc/group", b"root:x:0:\n"),
        ],
    )
    run = run_inject(tmp_path, fs, InjectOptions(certs=False, zoneinfo=False), {"User": "42"})
    assert set(run.added) == {"usr/lib/passwd"}
    assert run.added["usr/lib/passwd"].entry.mode == 0o640  # type: ignore[union-attr]
    assert run.text("etc/passwd") == "root:x:0:0::/:/bin/sh\nuser42:x:42:0:user42:/:/sbin/nologin\n"


# ----------------------------------------------------------------------------------------------------------
# Options and CLI flags


def parse(argv: list[str]) -> InjectOptions:
    parser = argparse.ArgumentParser()
    Inject.add_arguments(parser)
    return Inject.options_from_args(parser.parse_args(argv))


def test_flags() -> None:
    assert parse([]) == InjectOptions()
    assert parse(["--inject", "certs,passwd"]) == InjectOptions(zoneinfo=False)
    assert parse(["--inject", "all", "--no-inject-certs"]) == InjectOptions(certs=False)
    assert parse(["--inject", "none"]) == InjectOptions(certs=False, zoneinfo=False, passwd=False)
    assert parse(["--zoneinfo", "all"]).zones == "all"
    assert parse(["--zoneinfo", "Europe/Paris,Asia/Tokyo"]).zones == "Europe/Paris,Asia/Tokyo"
    for bad in (
        ["--inject", "certs,fonts"],
        ["--zoneinfo", "Nowhere/City"],
        ["--ca-bundle", "/nonexistent.pem"],
    ):
        with pytest.raises(UsageError):
            parse(bad)


@pytest.mark.parametrize("kind", ["certs", "zoneinfo", "passwd"])
def test_each_kind_can_be_turned_off(tmp_path: Path, kind: str) -> None:
    run = run_inject(tmp_path, make_fs(tmp_path, []), parse([f"--no-inject-{kind}"]))
    prefixes = {"certs": "etc/ssl/", "zoneinfo": ZONEINFO_DIR, "passwd": "etc/passwd"}
    assert not any(p.startswith(prefixes[kind]) for p in run.added)
    assert len({prefix for prefix in prefixes.values() if any(p.startswith(prefix) for p in run.added)}) == 2


# ----------------------------------------------------------------------------------------------------------
# End to end through optimize(), on the fixtures


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


@pytest.mark.parametrize("name", ["oras/hello-world.tar", "ggcr/hello-world-v25.tar"])
def test_scratch_fixtures_end_to_end(tmp_path: Path, fixtures: Path, name: str) -> None:
    source = fixture(f"images/{name}")
    out = tmp_path / "out.tar"
    report = optimize(str(source), str(out), Options(passes=("inject",)))
    [image] = report.images
    assert [p.status.value for p in image.passes] == ["ok"]
    assert [layer.status for layer in image.layers] == ["unchanged", "added"]
    members, contents, config = top_layer(out)
    files = {n for n, m in members.items() if m.isfile() or m.issym()}
    assert files == {DEBIAN_BUNDLE, "etc/ssl/cert.pem", "etc/passwd", "etc/group"} | {
        f"{ZONEINFO_DIR}/{z}" for z in DEFAULT_ZONES
    }
    assert contents[DEBIAN_BUNDLE] == CERTIFI
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())
    assert len({m.mtime for m in members.values()}) == 1
    assert list(members) == sorted(members, key=lambda p: p.split("/"))
    history = config["history"][-1]
    assert "inject: " in history["comment"] and "CA certificates" in history["comment"]
    assert "zoneinfo" in history["comment"] and "passwd" in history["comment"]
    # The pass's cost: well under the 2 MB and 1 s.
    assert image.layers[-1].size_after < 2_000_000
    assert image.passes[0].seconds < 1.0
    # skopeo copies it and umoci unpacks it: the files are where the runtimes look.
    rootfs = skopeo_umoci_rootfs(out, tmp_path)
    assert (rootfs / "etc/ssl/cert.pem").read_bytes() == CERTIFI
    assert os.readlink(rootfs / "etc/ssl/cert.pem") == "certs/ca-certificates.crt"
    assert (rootfs / ZONEINFO_DIR / "UTC").read_bytes().startswith(b"TZif")
    assert (rootfs / "etc/passwd").read_text() == contents["etc/passwd"].decode()
    assert (rootfs / "hello").is_file()
    # Optimizing the output again injects nothing: the image has it now.
    again = optimize(str(out), str(tmp_path / "again.tar"), Options(passes=("inject",)))
    assert not again.changed
    assert not [f for f in again.images[0].passes[0].findings if f.action == "added"]


def distroless_image(fixtures: Path, path: Path, config: dict[str, Any]) -> Path:
    """An image whose one layer is the distroless rootfs fixture (its entries rewritten by the test helper)."""
    layer: list[Spec] = []
    with tarfile.open(fixture("images/distroless/static-debian11-rootfs.tar.gz")) as tar:
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


def test_distroless_image_end_to_end_is_unchanged(tmp_path: Path, fixtures: Path) -> None:
    source = distroless_image(
        fixtures, tmp_path / "distroless.tar", {"User": "65532", "Env": ["TZ=Europe/Paris"]}
    )
    report = optimize(str(source), str(tmp_path / "out.tar"), Options(passes=("inject",)))
    assert not report.changed
    assert [layer.status for layer in report.images[0].layers] == ["unchanged"]


# ----------------------------------------------------------------------------------------------------------
# Functional: skopeo + umoci round trip, then real clients on the unpacked tree


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


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory, test_ca: dict[str, Path]) -> Path:
    """A scratch image (User 1000, TZ=Europe/Paris, files owned by nobody and 1000) through the CLI with
    --ca-bundle, copied by skopeo and unpacked by umoci."""
    from optimizer.cli import main

    where = tmp_path_factory.mktemp("functional")
    layer = [
        d("data"),
        f("data/by-nobody", b"n", uid=65534, gid=65534),
        f("data/by-app", b"a", uid=1000, gid=0),
    ]
    source = build_image(where / "in.tar", [layer], {"config": {"User": "1000", "Env": ["TZ=Europe/Paris"]}})
    out = where / "out.tar"
    argv = [str(source), str(out), "--passes", "inject", "--ca-bundle", str(test_ca["ca"]), "-q"]
    assert main(argv) == 0
    return skopeo_umoci_rootfs(out, where)


class _TlsServer:
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


@pytest.fixture
def tls_server(test_ca: dict[str, Path]) -> Iterator[_TlsServer]:
    server = _TlsServer(test_ca["server"], test_ca["server-key"])
    yield server
    server.close()


def fetch(port: int, cafile: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return tls.recv(100)


def test_python_ssl_verifies_with_the_injected_bundle(unpacked: Path, tls_server: _TlsServer) -> None:
    for bundle in (unpacked / DEBIAN_BUNDLE, unpacked / "etc/ssl/cert.pem"):
        assert fetch(tls_server.port, bundle) == b"hello over verified TLS"
    with pytest.raises(ssl.SSLCertVerificationError):
        fetch(tls_server.port, Path(certifi.where()))  # the same client without the test CA fails


def test_zoneinfo_loads_from_the_unpacked_tree_only(unpacked: Path) -> None:
    # -S: no site-packages, so the tzdata package cannot answer instead of the tree.
    script = """
import importlib.util, json, sys, zoneinfo
from datetime import datetime, timezone
assert importlib.util.find_spec("tzdata") is None
zoneinfo.reset_tzpath(to=[sys.argv[1]])
out = {}
for key in ("Europe/Paris", "UTC", "Etc/GMT+5", "America/New_York"):
    try:
        zone = zoneinfo.ZoneInfo.no_cache(key)
    except zoneinfo.ZoneInfoNotFoundError:
        out[key] = None
        continue
    out[key] = [zone.tzname(datetime(2024, m, 1, tzinfo=timezone.utc).astimezone(zone)) for m in (1, 7)]
print(json.dumps(out))
"""
    result = subprocess.run(
        [sys.executable, "-S", "-c", script, str(unpacked / ZONEINFO_DIR)],
        check=True,
        capture_output=True,
        text=True,
    )
    assert json.loads(result.stdout) == {
        "Europe/Paris": ["CET", "CEST"],
        "UTC": ["UTC", "UTC"],
        "Etc/GMT+5": ["-05", "-05"],
        "America/New_York": None,  # not injected: the tree is the only source
    }


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


@pytest.fixture(scope="module")
def with_busybox(unpacked: Path) -> Path:
    if os.geteuid() != 0:
        missing("chroot, and umoci unpacking with the image's owners, need root")
    if not os.path.isfile("/bin/busybox") or not is_static("/bin/busybox"):
        missing("a static /bin/busybox (Debian package busybox-static)")
    (unpacked / "bin").mkdir(exist_ok=True)
    shutil.copy2("/bin/busybox", unpacked / "bin" / "busybox")
    return unpacked


def test_busybox_resolves_names_and_zones(with_busybox: Path) -> None:
    rootfs = with_busybox
    # As the container runs it (User 1000, no group: gid 0), and by name.
    assert busybox(rootfs, "id", user="1000:0").strip() == "uid=1000(user1000) gid=0(root) groups=0(root)"
    assert busybox(rootfs, "id", "user1000").strip() == "uid=1000(user1000) gid=0(root) groups=0(root)"
    assert (
        busybox(rootfs, "id", "nobody").strip()
        == "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)"
    )
    listing = busybox(rootfs, "ls", "-l", "/data")
    by_name = {line.split()[-1]: line.split()[2:4] for line in listing.splitlines() if line.startswith("-")}
    assert by_name == {"by-app": ["user1000", "root"], "by-nobody": ["nobody", "nogroup"]}
    assert busybox(rootfs, "date", "-d", "@0", "+%Z %H:%M", tz="Europe/Paris").strip() == "CET 01:00"
    assert (
        busybox(rootfs, "date", "-d", "@1719835200", "+%Z %H:%M", tz="Europe/Paris").strip() == "CEST 14:00"
    )
    # A zone that was not injected is not found: busybox falls back to UTC with the name's first part.
    assert "CET" not in busybox(rootfs, "date", "-d", "@0", "+%Z", tz="Europe/Berlin")

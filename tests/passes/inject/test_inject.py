"""The ``inject`` pass: nothing added where the files exist, the right files added where they do not, and
the result working for real clients (OpenSSL through Python's ``ssl``, ``zoneinfo``, a static busybox in a chroot)."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import certifi
import pytest
import tzdata

from optimizer import Options, optimize
from optimizer.errors import UsageError
from optimizer.filesystem import FileSystem
from optimizer.model import EntryKind
from passes.inject import InjectOptions
from passes.inject.accounts import parse_group, parse_passwd
from passes.inject.zoneinfo import ZONEINFO_DIR
from tests.passes.inject.runs import (
    CERTIFI,
    DEBIAN_BUNDLE,
    DEFAULT_ZONES,
    ZONES,
    TlsServer,
    busybox,
    distroless_image,
    f,
    fetch,
    make_fs,
    parse,
    run_inject,
    skopeo_umoci_rootfs,
    top_layer,
)


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


def test_windows_images_are_left_alone(tmp_path: Path) -> None:
    run = run_inject(tmp_path, make_fs(tmp_path, [f("Files/hello.exe", b"MZ")]), system="windows")
    assert run.changes == []
    assert [(f.action, f.reason) for f in run.report.findings] == [
        ("kept", "a windows image: nothing to inject")
    ]


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


def test_flags() -> None:
    assert parse([]) == InjectOptions()
    assert parse(["--no-inject-zoneinfo"]) == InjectOptions(zoneinfo=False)
    assert parse(["--no-inject-certs", "--no-inject-passwd"]) == InjectOptions(certs=False, passwd=False)
    assert parse(["--inject-unneeded"]) == InjectOptions(needed_only=False)
    assert parse(["--zoneinfo", "all"]).zones == "all"
    assert parse(["--zoneinfo", "Europe/Paris,Asia/Tokyo"]).zones == "Europe/Paris,Asia/Tokyo"
    for bad in (
        ["--zoneinfo", "Nowhere/City"],
        ["--ca-bundle", "/nonexistent.pem"],
    ):
        with pytest.raises(UsageError):
            parse(bad)


@pytest.mark.parametrize("kind", ["certs", "zoneinfo", "passwd"])
def test_each_kind_can_be_turned_off(tmp_path: Path, kind: str) -> None:
    run = run_inject(tmp_path, make_fs(tmp_path, []), parse([f"--no-inject-{kind}", "--inject-unneeded"]))
    prefixes = {"certs": "etc/ssl/", "zoneinfo": ZONEINFO_DIR, "passwd": "etc/passwd"}
    assert not any(p.startswith(prefixes[kind]) for p in run.added)
    assert len({prefix for prefix in prefixes.values() if any(p.startswith(prefix) for p in run.added)}) == 2


@pytest.mark.parametrize("name", ["oras/hello-world.tar", "ggcr/hello-world-v25.tar"])
def test_scratch_fixtures_end_to_end(tmp_path: Path, fixtures: Path, name: str) -> None:
    source = fixtures / "images" / name
    # hello prints a text: no TLS, no zones, no names. Nothing is added, and the report says why.
    partial = name == "oras/hello-world.tar"  # a one-platform export of a multi-platform index
    default = optimize(
        str(source),
        str(tmp_path / "default.tar"),
        Options(base="none", passes=("inject",), allow_partial=partial),
    )
    assert not default.changed
    kept = [f.reason for f in default.images[0].passes[0].findings if f.action == "kept"]
    assert len(kept) == 3 and all("nothing needs" in reason for reason in kept), kept
    # --inject-unneeded adds what is missing, as the pass did before it asked for evidence.
    out = tmp_path / "out.tar"
    unneeded = Options(
        base="none",
        passes=("inject",),
        pass_options=(InjectOptions(needed_only=False),),
        allow_partial=partial,
    )
    report = optimize(str(source), str(out), unneeded)
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
    again = optimize(str(out), str(tmp_path / "again.tar"), unneeded)
    assert not again.changed
    assert not [f for f in again.images[0].passes[0].findings if f.action == "added"]


def test_distroless_image_end_to_end_is_unchanged(tmp_path: Path, fixtures: Path) -> None:
    source = distroless_image(
        fixtures, tmp_path / "distroless.tar", {"User": "65532", "Env": ["TZ=Europe/Paris"]}
    )
    report = optimize(str(source), str(tmp_path / "out.tar"), Options(base="none", passes=("inject",)))
    assert not report.changed
    assert [layer.status for layer in report.images[0].layers] == ["unchanged"]


def test_python_ssl_verifies_with_the_injected_bundle(unpacked: Path, tls_server: TlsServer) -> None:
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

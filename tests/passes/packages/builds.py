"""Real package databases for the tests: a .deb built by dpkg-deb and installed by ``dpkg --root``, an .rpm
built by rpmbuild and installed by ``rpm --root``; images made from the trees; the managers' own checks.

The package ``tool`` holds what every pass would change: an ELF built with ``gcc -g`` (strip-elf), an
uncompressed PNG (media), ``notes.txt`` with an identical ``notes.txt.gz`` (compressed-duplicates). The same
files outside any package, under ``/app``, show that the passes still change what nobody lists.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
from pathlib import Path

from optimizer.model import EntryKind
from tests.conftest import require_tool
from tests.imagetools import build_image, entry

__all__ = [
    "PAYLOAD",
    "dpkg_root",
    "dpkg_verify",
    "image_of",
    "payload",
    "rpm_root",
    "rpm_verify",
]

C_SOURCE = b'#include <stdio.h>\nint main(int argc, char **argv) { printf("%d\\n", argc); return 0; }\n'
# Where the package's files go (root-relative), and the same files outside any package.
PAYLOAD = (
    "usr/bin/tool",
    "usr/share/tool/logo.png",
    "usr/share/tool/notes.txt",
    "usr/share/tool/notes.txt.gz",
)
APP = tuple(path.replace("usr/bin/", "app/").replace("usr/share/tool/", "app/") for path in PAYLOAD)


def _png() -> bytes:
    from PIL import Image

    image = Image.new("RGB", (64, 64))
    image.putdata([((x * 4) % 256, (y * 4) % 256, (x ^ y) % 256) for y in range(64) for x in range(64)])
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=0)
    return out.getvalue()


def payload(workdir: Path) -> dict[str, tuple[bytes, int]]:
    """path -> (bytes, mode) of the package's files."""
    gcc = require_tool("gcc", "gcc")
    (workdir / "tool.c").write_bytes(C_SOURCE)
    subprocess.run([gcc, "-g", "-O1", "-o", str(workdir / "tool"), str(workdir / "tool.c")], check=True)
    notes = b"".join(f"line {n}: the package's notes\n".encode() for n in range(400))
    return {
        PAYLOAD[0]: ((workdir / "tool").read_bytes(), 0o755),
        PAYLOAD[1]: (_png(), 0o644),
        PAYLOAD[2]: (notes, 0o644),
        PAYLOAD[3]: (gzip.compress(notes, mtime=0), 0o644),
    }


def _write(root: Path, files: dict[str, tuple[bytes, int]]) -> None:
    for path, (data, mode) in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(mode)


def dpkg_root(workdir: Path) -> Path:
    """A tree where dpkg installed ``tool`` (and /app holds the same files, unpackaged)."""
    dpkg_deb = require_tool("dpkg-deb", "dpkg")
    dpkg = require_tool("dpkg", "dpkg")
    files = payload(workdir)
    stage = workdir / "stage"
    _write(stage, files)
    (stage / "DEBIAN").mkdir()
    (stage / "DEBIAN" / "control").write_text(
        "Package: tool\nVersion: 1.0\nArchitecture: all\nMaintainer: Tests <tests@example.org>\n"
        "Description: files every pass would change\n"
    )
    subprocess.run(
        [dpkg_deb, "--root-owner-group", "--build", str(stage), str(workdir / "tool.deb")],
        check=True,
        capture_output=True,
    )
    root = workdir / "root"
    for directory in ("info", "updates", "triggers"):
        (root / "var/lib/dpkg" / directory).mkdir(parents=True)
    (root / "var/lib/dpkg/status").touch()
    subprocess.run(
        [dpkg, f"--root={root}", "--force-script-chrootless", "-i", str(workdir / "tool.deb")],
        check=True,
        capture_output=True,
    )
    _write(root, dict(zip(APP, files.values(), strict=True)))
    return root


def dpkg_verify(root: Path) -> list[str]:
    dpkg = require_tool("dpkg", "dpkg")
    result = subprocess.run([dpkg, f"--root={root}", "--verify"], check=True, capture_output=True, text=True)
    return result.stdout.splitlines()


SPEC = """Name: tool
Version: 1.0
Release: 1
Summary: files every pass would change
License: MIT
AutoReqProv: no
%global __os_install_post %{nil}
%global debug_package %{nil}
%description
files every pass would change
%install
cp -a PAYLOAD/. %{buildroot}/
%files
/usr/bin/tool
/usr/share/tool
"""


def rpm_root(workdir: Path) -> Path:
    """A tree where rpm installed ``tool`` into its SQLite database (and /app holds the same files)."""
    rpmbuild = require_tool("rpmbuild", "rpm")
    rpm = require_tool("rpm", "rpm")
    files = payload(workdir)
    stage = workdir / "stage"
    _write(stage, files)
    spec = workdir / "tool.spec"
    spec.write_text(SPEC.replace("PAYLOAD", str(stage)))
    top = workdir / "rpmbuild"
    subprocess.run(
        [rpmbuild, "--define", f"_topdir {top}", "--define", "_binary_payload w9.gzdio", "-bb", str(spec)],
        check=True,
        capture_output=True,
    )
    [package] = list((top / "RPMS").rglob("*.rpm"))
    root = workdir / "root"
    root.mkdir()
    subprocess.run(
        [rpm, "--root", str(root), "--dbpath", "/var/lib/rpm", "--nodeps", "--noscripts", "-i", str(package)],
        check=True,
        capture_output=True,
    )
    _write(root, dict(zip(APP, files.values(), strict=True)))
    return root


def rpm_verify(root: Path) -> list[str]:
    rpm = require_tool("rpm", "rpm")
    result = subprocess.run(
        [rpm, "--root", str(root), "--dbpath", "/var/lib/rpm", "--nodeps", "-V", "tool"],
        capture_output=True,
        text=True,
    )
    return result.stdout.splitlines()


def image_of(root: Path, path: Path) -> Path:
    """A one-layer OCI archive of the tree at ``root`` (files, directories, symlinks; modes kept)."""
    layer = []
    for directory, names, files in sorted(os.walk(root)):
        names.sort()
        relative = os.path.relpath(directory, root)
        for name in sorted(names + files):
            full = Path(directory) / name
            inside = name if relative == "." else f"{relative}/{name}"
            stat = full.lstat()
            fields = {"mode": stat.st_mode & 0o7777, "mtime": int(stat.st_mtime)}  # rpm -V compares mtimes
            if full.is_symlink():
                layer.append(
                    entry(inside, EntryKind.SYMLINK, link=os.readlink(full), **(fields | {"mode": 0o777}))
                )
            elif full.is_dir():
                layer.append(entry(inside, EntryKind.DIR, **fields))
            else:
                layer.append(entry(inside, EntryKind.FILE, full.read_bytes(), **fields))
    return build_image(path, [layer], {"config": {}})

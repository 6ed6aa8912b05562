"""Build the tool's own image (what ``Containerfile`` builds) byte-reproducibly, without a container engine.

Two layers, written by our deterministic writer (``optimizer.output``) into an OCI archive that also carries
Docker's ``manifest.json`` (so ``skopeo``, ``podman load`` and ``docker load`` take it):

  1. Debian: ``debootstrap --variant=minbase`` with python3, libarchive13 and ca-certificates (what the
     Containerfile's last stage adds to ``debian:bookworm-slim``), run with ``SOURCE_DATE_EPOCH`` and cleaned of
     what differs between two runs or two hosts: logs, the ldconfig cache, downloaded .debs and apt lists,
     ``/dev``, the host's resolv.conf and hostname. The tree is cached until the mirror publishes the suite again.
  2. ``/opt/oci-optimizer``: a venv (``pyvenv.cfg``, ``bin/python3`` -> ``/usr/bin/python3``, ``bin/optimize``)
     whose site-packages hold the wheel of this source tree and the wheels of its dependencies for the image's
     Python and glibc, installed by name from a local folder (no build path is recorded) and without .pyc files.

Entries go in path order with numeric owners; layer 2's modes are normalised (0755 or 0644) whatever the umask.
Layer 1's mtimes are clamped to the time the mirror published the suite (its InRelease ``Date``), so it depends on
the mirror state alone and is shared by every version of the tool; layer 2's to ``SOURCE_DATE_EPOCH`` (default:
the time of the last commit), which also dates the image. The same mirror state and PyPI versions give the same
bytes: ``--check`` builds a second time from a new debootstrap and compares the archives, then has skopeo read
the image and runs ``optimize --version`` in it (unpacked by umoci, in a chroot). The Debian packages and wheels that went in are listed in
``OUTPUT.packages.txt``; ``--constraint`` a pip requirements file pins the wheels.

Needs root, debootstrap and PyPI (``--check``: skopeo, umoci); writes nothing outside ``--workdir`` and the
outputs.

Usage: .venv/bin/python scripts/build_tool_image.py [OUTPUT] [--base-output BASE.tar] [--check]
           [--suite bookworm] [--mirror URL] [--workdir DIR] [--constraint FILE] [--force]
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from optimizer.mediatypes import OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST
from optimizer.model import Entry, EntryKind
from optimizer.output import BlobSpec, CompressionSpec, LayerWriter, canonical_json, write_oci_archive

ROOT = Path(__file__).resolve().parent.parent
NAME = "oci-optimizer"
VENV = "opt/oci-optimizer"
DEBS = ("python3", "libarchive13", "ca-certificates")
SOURCES = ("pyproject.toml", "README.md", "optimizer", "passes")  # what the Containerfile copies
PATH_ENV = f"/{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LABELS = {
    "org.opencontainers.image.title": NAME,
    "org.opencontainers.image.source": "https://github.com/oci-optimizer/oci-optimizer",
    "org.opencontainers.image.licenses": "Apache-2.0",
}
ARCHITECTURES = {"amd64": "x86_64", "arm64": "aarch64", "ppc64el": "ppc64le", "s390x": "s390x"}
KEPT_XATTRS = ("security.capability",)  # what a program needs to run; never the host's SELinux labels


class BuildError(Exception):
    """A step of the build failed; the message says which and why."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(command: Sequence[str], what: str, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, check=False, env=env)
    except FileNotFoundError as error:
        raise BuildError(f"{what}: {command[0]} not found") from error
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
        raise BuildError(f"{what}: `{' '.join(command)}` exited with {done.returncode}\n{tail}")
    return done.stdout


# ---------------------------------------------------------------------------------------------------------
# Layer 1: Debian.


def release_epoch(mirror: str, suite: str) -> int:
    """When the mirror published the suite as it is now (its InRelease ``Date``): the Debian layer's time.

    Not the commit time: so the Debian layer depends on the mirror state alone (the same for every version of the
    tool), and every file debootstrap creates, being newer, is clamped to it."""
    url = f"{mirror.rstrip('/')}/dists/{suite}/InRelease"
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            text = response.read().decode("utf-8", "replace")
    except OSError as error:
        raise BuildError(f"cannot read {url}: {error}") from error
    found = re.search(r"^Date: (.+)$", text, re.M)
    if found is None:
        raise BuildError(f"{url} has no Date field")
    return int(email.utils.parsedate_to_datetime(found.group(1)).timestamp())


def debootstrap(tree: Path, suite: str, mirror: str, force: bool) -> tuple[Path, int]:
    """A cleaned minbase tree of ``suite`` with ``DEBS`` and its time, kept at ``tree`` while the mirror stays."""
    epoch = release_epoch(mirror, suite)
    stamp = tree.with_name(tree.name + ".complete")
    if tree.is_dir() and stamp.is_file() and not force:
        if stamp.read_text().split("\n", 1)[0] == str(epoch):
            log(f"Debian tree cached: {tree} ({stamp.read_text().splitlines()[1]})")
            return tree, epoch
        log(f"the mirror published {suite} again since {tree} was made: debootstrap again")
    if shutil.which("debootstrap") is None:
        raise BuildError("debootstrap not found: apt-get install debootstrap")
    if os.geteuid() != 0:
        raise BuildError("debootstrap needs root")
    temporary = tree.with_name(tree.name + ".tmp")
    for stale in (tree, temporary):
        if stale.exists():
            shutil.rmtree(stale)
    stamp.unlink(missing_ok=True)
    temporary.parent.mkdir(parents=True, exist_ok=True)
    command = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(DEBS)}",
        suite,
        str(temporary),
        mirror,
    ]
    log(f"{' '.join(command)} (about a minute)")
    # SOURCE_DATE_EPOCH: shadow's password dates and the .pyc files py3compile writes follow it.
    run(command, f"debootstrap {suite}", env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "LC_ALL": "C"})
    clean_debian(temporary)
    temporary.rename(tree)
    released = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))
    stamp.write_text(f"{epoch}\n{suite} from {mirror} as published {released}, with {', '.join(DEBS)}\n")
    return tree, epoch


def _empty(directory: Path) -> None:
    """Remove what is in ``directory``, keeping the folder, its owner and its mode (``/tmp`` stays 1777)."""
    if directory.is_dir() and not directory.is_symlink():
        info = directory.stat()
        shutil.rmtree(directory)
        directory.mkdir()
        os.chown(directory, info.st_uid, info.st_gid)
        directory.chmod(stat.S_IMODE(info.st_mode))


def clean_debian(rootfs: Path) -> None:
    """Drop what differs between two debootstrap runs (found by comparing two) or comes from the host."""
    for directory in ("dev", "tmp", "var/log", "var/lib/apt/lists", "var/cache/apt/archives"):
        _empty(rootfs / directory)
    for directory in ("var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "var/log/apt"):
        (rootfs / directory).mkdir(parents=True, exist_ok=True)
    leftovers = [
        rootfs / "var/cache/ldconfig/aux-cache",  # holds the inode and mtime of every library
        rootfs / "etc/hostname",
        *(rootfs / "var/cache/apt").glob("*.bin"),
        *(rootfs / "var/lib/dpkg").glob("*-old"),
        *(rootfs / "var/cache/debconf").glob("*-old"),
    ]
    for path in leftovers:
        path.unlink(missing_ok=True)
    (rootfs / "etc/resolv.conf").write_bytes(b"")  # runtimes mount their own


def dpkg_packages(rootfs: Path) -> dict[str, dict[str, str]]:
    """Package -> its fields, for every package installed in the tree (its dpkg status file)."""
    packages: dict[str, dict[str, str]] = {}
    for paragraph in (rootfs / "var/lib/dpkg/status").read_text().split("\n\n"):
        fields = dict(re.findall(r"^([\w-]+): (.*)$", paragraph, re.M))
        if "Package" in fields and "installed" in fields.get("Status", "").split():
            packages[fields["Package"]] = fields
    return packages


def dpkg_versions(rootfs: Path) -> dict[str, str]:
    return {name: fields["Version"] for name, fields in dpkg_packages(rootfs).items()}


def debian_architecture(rootfs: Path) -> str:
    return dpkg_packages(rootfs)["dpkg"]["Architecture"]


# ---------------------------------------------------------------------------------------------------------
# Layer 2: the venv.


@dataclass(frozen=True)
class Target:
    """The image's Python and platform, which the wheels must fit."""

    python: str  # "3.11.2"
    machine: str  # "x86_64"
    glibc: tuple[int, int]  # (2, 36)

    @property
    def minor(self) -> str:
        return ".".join(self.python.split(".")[:2])

    def pip_options(self) -> list[str]:
        """pip's cross-install options: CPython of this minor version, manylinux wheels up to this glibc."""
        major, minor = self.glibc
        platforms = [f"manylinux_{major}_{m}_{self.machine}" for m in range(minor, 4, -1)]
        platforms += [f"manylinux2014_{self.machine}"]
        if self.machine == "x86_64":
            platforms += ["manylinux2010_x86_64", "manylinux1_x86_64"]
        nodot = self.minor.replace(".", "")
        options = ["--only-binary=:all:", "--implementation", "cp", "--python-version", self.minor]
        for abi in (f"cp{nodot}", "abi3", "none"):
            options += ["--abi", abi]
        for platform in platforms:
            options += ["--platform", platform]
        return options


def image_target(rootfs: Path) -> Target:
    versions = dpkg_versions(rootfs)
    python = re.match(r"[\d.]+", versions[f"python3.{_python_minor(rootfs)}"])
    glibc = re.match(r"(\d+)\.(\d+)", versions["libc6"])
    if python is None or glibc is None:
        raise BuildError("cannot tell the image's Python or glibc version from its dpkg status")
    machine = ARCHITECTURES.get(debian_architecture(rootfs))
    if machine is None:
        raise BuildError(f"no wheel platform known for Debian architecture {debian_architecture(rootfs)}")
    return Target(python.group(0).rstrip("."), machine, (int(glibc.group(1)), int(glibc.group(2))))


def _python_minor(rootfs: Path) -> str:
    link = os.readlink(rootfs / "usr/bin/python3")  # "python3.11"
    return link.removeprefix("python3.")


def source_tree(work: Path) -> Path:
    """A copy of what the Containerfile copies, so no stale ``build/`` of the checkout reaches the wheel."""
    source = work / "src"
    if source.exists():
        shutil.rmtree(source)
    source.mkdir(parents=True)
    for name in SOURCES:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(origin, source / name)
    return source


def install_venv(work: Path, target: Target, constraint: Path | None) -> tuple[Path, str, list[str]]:
    """The venv's tree in ``work/venv``; returns it, our version and the wheels installed."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    wheels, venv = work / "wheels", work / "venv"
    for folder in (wheels, venv):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    log("building the wheel of this source tree")
    run([*pip, "wheel", "-q", "--no-deps", "-w", str(wheels), str(source_tree(work))], "pip wheel")
    (ours,) = wheels.glob("oci_optimizer-*.whl")
    version = ours.name.split("-")[1]
    log(
        f"downloading the wheels it needs for CPython {target.python} on glibc {target.glibc[0]}.{target.glibc[1]}"
    )
    pins = ["--constraint", str(constraint)] if constraint else []
    run([*pip, "download", "-q", "-d", str(wheels), *target.pip_options(), *pins, str(ours)], "pip download")
    site = venv / f"lib/python{target.minor}/site-packages"
    run(
        [*pip, "install", "-q", "--no-index", "--find-links", str(wheels), "--no-compile", "--target", str(site),
         *target.pip_options(), f"{NAME}=={version}"],
        "pip install",
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts naming the build host's Python
    installed = sorted(p.name for p in wheels.glob("*.whl"))
    bin_dir = venv / "bin"
    bin_dir.mkdir()
    (venv / "pyvenv.cfg").write_text(
        f"home = /usr/bin\ninclude-system-site-packages = false\nversion = {target.python}\n"
    )
    os.symlink("/usr/bin/python3", bin_dir / "python3")
    os.symlink("python3", bin_dir / "python")
    (bin_dir / "optimize").write_text(
        f"#!/{VENV}/bin/python3\nimport sys\n\nfrom optimizer.cli import main\n\nsys.exit(main())\n"
    )
    (bin_dir / "optimize").chmod(0o755)
    return venv, version, installed


# ---------------------------------------------------------------------------------------------------------
# Trees to layers, layers to an image.


def _path_key(path: str) -> str:
    return path.replace("/", "\0")  # the order of component tuples: "a/b" before "a-b"


def tree_entries(root: Path, prefix: str, normalise: bool) -> Iterator[tuple[Entry, Path | None]]:
    """Every file under ``root`` as an entry named ``prefix/...``, in path order; hardlinks after the first."""
    for mounted in ("proc", "sys", "dev"):
        if os.path.ismount(root / mounted):
            raise BuildError(f"{root / mounted} is still mounted: unmount it first")
    names: list[str] = []
    for directory, subdirectories, files in os.walk(root):
        relative = os.path.relpath(directory, root)
        for name in subdirectories + files:
            names.append(name if relative == "." else f"{relative}/{name}")
    first_of_inode: dict[tuple[int, int], str] = {}
    for name in sorted(names, key=_path_key):
        path = root / name
        info = os.lstat(path)
        full = f"{prefix}/{name}" if prefix else name
        mode = stat.S_IMODE(info.st_mode)
        if normalise and not stat.S_ISLNK(info.st_mode):
            mode = 0o755 if stat.S_ISDIR(info.st_mode) or mode & 0o111 else 0o644
        uid, gid = (0, 0) if normalise else (info.st_uid, info.st_gid)
        entry = Entry(full, EntryKind.DIR, mode=mode, uid=uid, gid=gid, mtime=int(info.st_mtime))
        if stat.S_ISDIR(info.st_mode):
            yield entry, None
        elif stat.S_ISLNK(info.st_mode):
            yield replace(entry, kind=EntryKind.SYMLINK, link=os.readlink(path)), None
        elif stat.S_ISREG(info.st_mode):
            inode = (info.st_dev, info.st_ino)
            if info.st_nlink > 1 and inode in first_of_inode:
                yield replace(entry, kind=EntryKind.HARDLINK, link=first_of_inode[inode]), None
                continue
            first_of_inode[inode] = full
            xattrs = {key: os.getxattr(path, key, follow_symlinks=False) for key in _xattrs(path)}
            yield replace(entry, kind=EntryKind.FILE, size=info.st_size, xattrs=xattrs), path
        elif stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
            kind = EntryKind.CHAR if stat.S_ISCHR(info.st_mode) else EntryKind.BLOCK
            major, minor = os.major(info.st_rdev), os.minor(info.st_rdev)
            yield replace(entry, kind=kind, devmajor=major, devminor=minor), None
        elif stat.S_ISFIFO(info.st_mode):
            yield replace(entry, kind=EntryKind.FIFO), None
        else:
            log(f"skipped {full}: a socket")


def _xattrs(path: Path) -> list[str]:
    try:
        return sorted(key for key in os.listxattr(path, follow_symlinks=False) if key in KEPT_XATTRS)
    except OSError:  # a file system without xattrs
        return []


def write_layer(path: Path, entries: Iterator[tuple[Entry, Path | None]], epoch: int) -> BlobSpec:
    writer = LayerWriter(str(path), CompressionSpec(), epoch, workers=os.cpu_count() or 1)
    try:
        for entry, source in entries:
            if source is None:
                writer.add(entry)
            else:
                with open(source, "rb") as reader:
                    writer.add(entry, reader)
        return writer.close()
    except BaseException:
        writer.abort()
        raise


def _directory(path: str, epoch: int) -> tuple[Entry, None]:
    return Entry(path, EntryKind.DIR, mode=0o755, mtime=epoch), None


def write_image(
    output: Path,
    layers: Sequence[tuple[BlobSpec, str, int]],
    config: Mapping[str, object],
    tag: str,
) -> str:
    """An OCI archive of ``layers`` (blob, history line, time) with ``config``; returns the manifest digest.

    The image's ``created`` is the time of its last layer."""
    config = {
        **config,
        "created": _rfc3339(layers[-1][2]),
        "rootfs": {"type": "layers", "diff_ids": [blob.diff_id for blob, _, _ in layers]},
        "history": [{"created": _rfc3339(epoch), "created_by": line} for _, line, epoch in layers],
    }
    config_bytes = canonical_json(config)
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
            "layers": [
                {"mediaType": OCI_LAYER_GZIP, "digest": b.digest, "size": b.size} for b, _, _ in layers
            ],
        }
    )
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    blobs: dict[str, tuple[str, int, Callable[[], BinaryIO]]] = {
        blob.digest: (blob.digest, blob.size, _opener(blob.path)) for blob, _, _ in layers
    }
    for data, digest in ((config_bytes, config_digest), (manifest, manifest_digest)):
        blobs[digest] = (digest, len(data), _bytes_opener(data))
    annotations = {
        "io.containerd.image.name": tag,
        "org.opencontainers.image.ref.name": tag.rsplit(":", 1)[1],
    }
    index = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest),
                 "annotations": annotations}
            ],
        }
    )  # fmt: skip
    docker_manifest = canonical_json(
        [
            {
                "Config": "blobs/" + config_digest.replace(":", "/"),
                "RepoTags": [tag],
                "Layers": ["blobs/" + blob.digest.replace(":", "/") for blob, _, _ in layers],
            }
        ]
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    write_oci_archive(str(output), index, docker_manifest, blobs)
    return manifest_digest


def _opener(path: str) -> Callable[[], BinaryIO]:
    return lambda: open(path, "rb")


def _bytes_opener(data: bytes) -> Callable[[], BinaryIO]:
    return lambda: io.BytesIO(data)


# ---------------------------------------------------------------------------------------------------------
# The build.


def default_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if value:
        return int(value)
    try:
        return int(
            run(["git", "-C", str(ROOT), "log", "-1", "--format=%ct"], "the last commit's time").strip()
        )
    except BuildError as error:
        raise BuildError(f"set SOURCE_DATE_EPOCH (not a git checkout: {error})") from error


def _rfc3339(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclass(frozen=True)
class Built:
    """An archive this script wrote, and what went into it."""

    output: Path
    sha256: str
    manifest: str
    version: str
    rootfs: Path


def build(
    output: Path, base_output: Path | None, work: Path, args: argparse.Namespace, epoch: int, force: bool
) -> Built:
    """Build the image (and the base-only image)."""
    work.mkdir(parents=True, exist_ok=True)
    rootfs, debian_epoch = debootstrap(work / f"debian-{args.suite}", args.suite, args.mirror, force)
    target = image_target(rootfs)
    architecture = debian_architecture(rootfs)
    log("layer 1: the Debian tree")
    debian_line = f"debootstrap --variant=minbase --include={','.join(DEBS)} {args.suite}"
    debian_entries = tree_entries(rootfs, "", normalise=False)
    debian = write_layer(work / "layer-debian.tar.gz", debian_entries, debian_epoch)
    venv, version, wheels = install_venv(work, target, args.constraint)
    log(f"layer 2: /{VENV} ({NAME} {version}, {len(wheels)} wheels)")
    app_entries = [
        _directory("opt", epoch),
        _directory(VENV, epoch),
        *tree_entries(venv, VENV, normalise=True),
        _directory("work", epoch),
    ]
    app = write_layer(work / "layer-app.tar.gz", iter(app_entries), epoch)
    base_config = {"architecture": architecture, "os": "linux"}
    if base_output is not None:
        write_image(
            base_output,
            [(debian, debian_line, debian_epoch)],
            {**base_config, "config": {"Cmd": ["bash"], "Env": [f"PATH={PATH_ENV.split(':', 1)[1]}"]}},
            f"localhost/{NAME}-base:{args.suite}",
        )
        log(f"wrote {base_output} (the Debian layer alone: a BASE for the Containerfile)")
    config = {
        **base_config,
        "config": {
            "Entrypoint": ["optimize"],
            "Cmd": ["--help"],
            "Env": [f"PATH={PATH_ENV}"],
            "WorkingDir": "/work",
            "Labels": {**LABELS, "org.opencontainers.image.version": version},
        },
    }
    app_line = f"scripts/build_tool_image.py: /{VENV} ({NAME} {version} and its dependencies)"
    digest = write_image(
        output,
        [(debian, debian_line, debian_epoch), (app, app_line, epoch)],
        config,
        f"localhost/{NAME}:{version}",
    )
    listing = [f"# {output.name}: manifest {digest}, SOURCE_DATE_EPOCH={epoch}"]
    listing += [f"# Debian packages ({debian_line}, as published at {debian_epoch})"]
    listing += [f"{name} {ver}" for name, ver in sorted(dpkg_versions(rootfs).items())]
    listing += ["# wheels", *wheels]
    output.with_name(output.name + ".packages.txt").write_text("\n".join(listing) + "\n")
    sha = hashlib.sha256(output.read_bytes()).hexdigest()
    log(f"wrote {output}: {output.stat().st_size} bytes, sha256 {sha}, manifest {digest}")
    return Built(output, sha, digest, version, rootfs)


def check(first: Built, args: argparse.Namespace, epoch: int) -> None:
    """Build again from a new debootstrap: the same bytes. Then skopeo reads it and the image runs optimize."""
    again = args.workdir / "check"
    second = build(again / first.output.name, None, again, args, epoch, force=True)
    if second.sha256 != first.sha256:
        changed = sorted(
            name
            for name, version in dpkg_versions(second.rootfs).items()
            if dpkg_versions(first.rootfs).get(name) != version
        )
        why = f"the mirror changed in between ({', '.join(changed)}): run with --force" if changed else ""
        raise BuildError(f"not reproducible: {first.output} and {second.output} differ {why}".rstrip())
    log(f"reproducible: two builds, two debootstraps, one sha256 {first.sha256}")
    shutil.rmtree(again)
    inspected = json.loads(
        run(["skopeo", "inspect", f"oci-archive:{first.output.resolve()}"], "skopeo inspect")
    )
    if inspected["Digest"] != first.manifest:
        raise BuildError(f"skopeo reads manifest {inspected['Digest']}, not {first.manifest}")
    log("skopeo inspect: accepted")
    bundle = args.workdir / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    layout = args.workdir / "layout"
    shutil.rmtree(layout, ignore_errors=True)
    run(
        ["skopeo", "copy", "-q", f"oci-archive:{first.output.resolve()}", f"oci:{layout}:check"],
        "skopeo copy",
    )
    run(["umoci", "unpack", "--image", f"{layout}:check", str(bundle)], "umoci unpack")
    rootfs = bundle / "rootfs"
    # A private mount namespace: /dev for subprocesses (ctypes finds libarchive through ldconfig -p).
    script = f"mount --rbind /dev {rootfs}/dev && chroot {rootfs} /usr/bin/env -i PATH={PATH_ENV} optimize --version"
    printed = run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script], "optimize in the image"
    )
    if not printed.startswith(f"optimize ({NAME}) {first.version}\n"):
        raise BuildError(f"optimize --version in the image printed {printed!r}")
    log(f"the image runs: {printed.splitlines()[0]}")
    if os.path.ismount(rootfs / "dev"):  # never: the bind mount lived in its own namespace; never delete /dev
        raise BuildError(f"{rootfs / 'dev'} is still mounted: unmount it, then remove {bundle}")
    shutil.rmtree(bundle)
    shutil.rmtree(layout)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", nargs="?", type=Path, default=ROOT / "build" / f"{NAME}-image.tar")
    parser.add_argument("--base-output", type=Path, help="also write the Debian layer alone as an image")
    parser.add_argument("--suite", default="bookworm")
    parser.add_argument("--mirror", default="http://deb.debian.org/debian")
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "tool-image")
    parser.add_argument("--constraint", type=Path, help="pip constraints for the wheels (pins versions)")
    parser.add_argument("--force", action="store_true", help="run debootstrap again even when cached")
    parser.add_argument(
        "--check",
        action="store_true",
        help="build again from a new debootstrap and compare; then skopeo inspect, and optimize --version inside",
    )
    args = parser.parse_args(argv)
    os.umask(0o022)  # files debootstrap and pip create get the same modes whoever runs this
    try:
        epoch = default_epoch()
        first = build(args.output, args.base_output, args.workdir, args, epoch, args.force)
        if args.check:
            check(first, args, epoch)
    except BuildError as error:
        print(f"build_tool_image: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

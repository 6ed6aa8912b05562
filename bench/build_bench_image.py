"""Build the bench images from real Debian packages, packed with umoci, cached under ``bench/out/``.

``bench/out/bench-image.tar`` (the realistic image, a few hundred MB uncompressed), built like a Dockerfile:

  1. ``debootstrap --variant=minbase bookworm``, cleaned like the Debian base images (no .debs, no apt lists,
     no device nodes, an empty resolv.conf);
  2. ``apt-get update``: tens of MB of apt lists, which layer 6 deletes (dead data for the ``dead-data`` pass);
  3. python3, perl, curl, git, openssl;
  4. gcc, g++, binutils, make, libc6-dev: many large ELF files;
  5. python3-numpy (OpenBLAS), vim-tiny, procps, iproute2, file, xz-utils, zstd;
  6. ``rm -rf /var/lib/apt/lists/*``: whiteouts over layer 2.

Each step runs in a chroot of the unpacked rootfs (``/proc``, ``/dev`` and ``/etc/resolv.conf`` are mounted
for the step and unmounted before packing) and becomes one layer with ``umoci repack``.

``bench/out/small-image.tar`` (a few MB, for service benchmarks): busybox-static with its applet links and
``/etc`` files, then a second layer with a small app (a script, a config, 1 MiB of text).

Both are OCI archives (the layout tarred with sorted members, mtime 0). An image that exists is not rebuilt
unless ``--force``; the debootstrap tree is cached in ``bench/out/cache/``. Package versions follow the
mirror (``--mirror`` a snapshot.debian.org URL to pin them); the installed versions are listed in
``bench/out/bench-image.packages.txt``. File mtimes are those of the build, so two builds differ in digest but
not in content: which is what ``--normalize`` is for.

Needs root and the Debian packages debootstrap, umoci and busybox-static (for ``apt-get download``).

Usage: python bench/build_bench_image.py [--only big|small] [--force] [--mirror URL] [--suite bookworm]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BENCH_IMAGE,
    MANY_FILES_IMAGE,
    OUT,
    SMALL_IMAGE,
    human,
    image_layers,
    open_member,
    raw_stream,
)
from imagebuild import (
    CREATED,
    PATH_ENV,
    BuildError,
    chroot_run,
    clean_base,
    debootstrap,
    log,
    mounted_under,
    new_image,
    repack,
    require,
    run,
    umoci,
    write_archive,
)

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SUITE = "bookworm"
TAG = "bench"

APT_INSTALL = "apt-get install -y --no-install-recommends"
STEPS: tuple[tuple[str, str], ...] = (
    ("apt-get update", "apt-get update"),
    (
        "python3, perl, curl, git",
        f"{APT_INSTALL} python3 perl ca-certificates openssl curl git && apt-get clean",
    ),
    (
        "gcc, g++, binutils",
        f"{APT_INSTALL} gcc g++ make binutils libc6-dev && apt-get clean",
    ),
    (
        "numpy and tools",
        f"{APT_INSTALL} python3-numpy vim-tiny less procps iproute2 file xz-utils zstd && apt-get clean",
    ),
    ("drop the apt lists", "rm -rf /var/lib/apt/lists/*"),
)


def describe(archive: Path) -> None:
    """Print each layer's compressed and uncompressed size."""
    layers = image_layers(archive)
    total_raw = 0
    print(f"{archive} ({human(archive.stat().st_size)}): {len(layers)} layers")
    print(f"  {'#':<3}{'compressed':>12}{'uncompressed':>14}  created_by")
    for number, layer in enumerate(layers, 1):
        with open_member(archive, layer.member) as reader:
            raw = sum(len(chunk) for chunk in raw_stream(reader, layer.codec))
        total_raw += raw
        print(f"  {number:<3}{human(layer.size):>12}{human(raw):>14}  {layer.created_by[:70]}")
    total = sum(layer.size for layer in layers)
    print(f"  {'all':<3}{human(total):>12}{human(total_raw):>14}")


# ---------------------------------------------------------------------------------------------------------
# The two images.


def build_big(out: Path, suite: str, mirror: str, force: bool) -> None:
    if BENCH_IMAGE.is_file() and not force:
        log(f"{BENCH_IMAGE} exists (use --force to rebuild)")
        describe(BENCH_IMAGE)
        return
    tree = debootstrap(out / "cache", suite, mirror, force=False)
    work = out / "work-big"
    if work.exists():
        if mounted_under(work):
            raise BuildError(f"{work} has mounts left by an interrupted build: unmount them first")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    layout, bundle = work / "layout", work / "bundle"
    rootfs = new_image(layout, bundle, TAG, "/bin/bash")
    log("layer 1: the debootstrap tree")
    run(["cp", "-a", f"{tree}/.", str(rootfs)], "copying the debootstrap tree")
    clean_base(rootfs)
    repack(layout, bundle, TAG, f"debootstrap --variant=minbase {suite} {mirror}", "base layer")
    for number, (label, script) in enumerate(STEPS, 2):
        log(f"layer {number}: {label}")
        chroot_run(rootfs, script, f"layer {number} ({label})")
        repack(layout, bundle, TAG, f"/bin/sh -c {script}")
    packages = run(
        ["chroot", str(rootfs), "dpkg-query", "-W", "-f", "${Package} ${Version}\n"], "listing packages"
    )
    umoci("gc", "--layout", str(layout), what="umoci gc")
    write_archive(layout, BENCH_IMAGE)
    BENCH_IMAGE.with_suffix(".packages.txt").write_text(packages)
    shutil.rmtree(work)
    log(f"wrote {BENCH_IMAGE}")
    describe(BENCH_IMAGE)


SMALL_APPLETS = ("sh", "ls", "cat", "echo", "cp", "mv", "rm", "mkdir", "grep", "sed", "wget", "sleep", "env")


def build_small(out: Path, force: bool) -> None:
    if SMALL_IMAGE.is_file() and not force:
        log(f"{SMALL_IMAGE} exists (use --force to rebuild)")
        describe(SMALL_IMAGE)
        return
    work = out / "work-small"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    with tempfile.TemporaryDirectory(dir=work) as download:
        log("apt-get download busybox-static")
        run(
            ["apt-get", "download", "busybox-static"],
            "apt-get download busybox-static (run apt-get update?)",
            cwd=Path(download),
        )
        debs = sorted(Path(download).glob("busybox-static_*.deb"))
        if not debs:
            raise BuildError("apt-get download busybox-static produced no .deb")
        deb = debs[-1]
        extracted = Path(download) / "x"
        run(["dpkg-deb", "-x", str(deb), str(extracted)], f"dpkg-deb -x {deb.name}")
        busybox = extracted / "bin/busybox"
        if not busybox.is_file():
            raise BuildError(f"{deb.name} has no bin/busybox")
        layout, bundle = work / "layout", work / "bundle"
        rootfs = new_image(layout, bundle, TAG, "/bin/sh")
        (rootfs / "bin").mkdir(mode=0o755)
        shutil.copy2(busybox, rootfs / "bin/busybox")
        for applet in SMALL_APPLETS:
            (rootfs / "bin" / applet).symlink_to("busybox")
        (rootfs / "etc").mkdir(mode=0o755)
        (rootfs / "etc/passwd").write_text(
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
        )
        (rootfs / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
        for directory in ("tmp", "root"):
            (rootfs / directory).mkdir(mode=0o755)
        repack(layout, bundle, TAG, "busybox-static", "busybox and /etc")
        app = rootfs / "app"
        app.mkdir(mode=0o755)
        (app / "run.sh").write_text('#!/bin/sh\necho "hello from $(cat /app/config.json)"\nsleep 1\n')
        (app / "run.sh").chmod(0o755)
        (app / "config.json").write_text(json.dumps({"name": "small", "workers": 2}, sort_keys=True) + "\n")
        words = [
            f"line {i}: the quick brown fox jumps over the lazy dog {i * 7919 % 10007}\n"
            for i in range(16000)
        ]
        (app / "data.txt").write_text("".join(words))
        repack(layout, bundle, TAG, "COPY app /app", "the app")
        umoci("gc", "--layout", str(layout), what="umoci gc")
        write_archive(layout, SMALL_IMAGE)
    shutil.rmtree(work)
    log(f"wrote {SMALL_IMAGE}")
    describe(SMALL_IMAGE)


MANY_FILES = 250_000
MANY_FILES_PER_DIR = 500


def build_many(force: bool, count: int = MANY_FILES) -> None:
    """One layer of ``count`` small files (about 1 KiB each) in directories of 500: the memory bench.

    Peak memory must not grow with the image; this is the image where the per-entry index costs the most
    for its size. Written directly (no umoci: no Debian content is needed), deterministically.
    """
    if MANY_FILES_IMAGE.is_file() and not force:
        log(f"{MANY_FILES_IMAGE} exists (use --force to rebuild)")
        describe(MANY_FILES_IMAGE)
        return
    import gzip
    import hashlib
    import io

    work = OUT / "work-many"
    if work.exists():
        shutil.rmtree(work)
    blobs = work / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    log(f"writing {count} files in one layer")
    raw = hashlib.sha256()
    layer_path = work / "layer.tar.gz"

    class Hashing:
        def __init__(self, inner: gzip.GzipFile) -> None:
            self.inner = inner

        def write(self, data: bytes) -> int:
            raw.update(data)
            return self.inner.write(data)

    with (
        open(layer_path, "wb") as handle,
        gzip.GzipFile(fileobj=handle, mode="wb", compresslevel=1, mtime=0, filename="") as packed,
        tarfile.open(fileobj=Hashing(packed), mode="w|", format=tarfile.PAX_FORMAT) as tar,  # type: ignore[call-overload]
    ):
        for directory in range(0, count, MANY_FILES_PER_DIR):
            info = tarfile.TarInfo(f"data/d{directory // MANY_FILES_PER_DIR:05d}")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
            for number in range(directory, min(count, directory + MANY_FILES_PER_DIR)):
                seed = hashlib.sha256(str(number).encode()).hexdigest()
                body = (f"{number} {seed}\n" * 14).encode()
                info = tarfile.TarInfo(f"data/d{directory // MANY_FILES_PER_DIR:05d}/f{number:07d}.txt")
                info.size, info.mode, info.mtime = len(body), 0o644, 1_700_000_000
                tar.addfile(info, io.BytesIO(body))

    def store(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return "sha256:" + digest

    layer_digest = "sha256:" + _file_sha256(layer_path)
    layer_size = layer_path.stat().st_size
    layer_path.rename(blobs / layer_digest.split(":", 1)[1])
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": {"Env": [f"PATH={PATH_ENV}"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + raw.hexdigest()]},
        "history": [{"created": CREATED, "created_by": f"{count} small files"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": store(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer_digest,
                "size": layer_size,
            }
        ],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": store(manifest_bytes),
                "size": len(manifest_bytes),
                "annotations": {"org.opencontainers.image.ref.name": "many"},
            }
        ],
    }
    (work / "index.json").write_text(json.dumps(index, sort_keys=True))
    (work / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    write_archive(work, MANY_FILES_IMAGE)
    shutil.rmtree(work)
    log(f"wrote {MANY_FILES_IMAGE}")
    describe(MANY_FILES_IMAGE)


def _file_sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--only", choices=("big", "small", "many"), help="build only one of the two images")
    parser.add_argument("--force", action="store_true", help="rebuild even if the image exists")
    parser.add_argument("--mirror", default=DEFAULT_MIRROR, help=f"Debian mirror (default {DEFAULT_MIRROR})")
    parser.add_argument("--suite", default=DEFAULT_SUITE, help=f"Debian suite (default {DEFAULT_SUITE})")
    args = parser.parse_args(argv)
    try:
        if os.geteuid() != 0:
            raise BuildError("run as root: debootstrap, chroot and mount need it")
        require("umoci", "umoci")
        OUT.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        if args.only in (None, "small"):
            build_small(OUT, args.force)
        if args.only in (None, "many"):
            build_many(args.force)
        if args.only in (None, "big"):
            build_big(OUT, args.suite, args.mirror, args.force)
        log(f"done in {time.monotonic() - started:.0f} s")
    except BuildError as error:
        print(f"build_bench_image: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

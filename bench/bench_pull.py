"""Pull benchmark (issue 16): time to the first extracted file, and pull + extract in all, from a local registry.

The bench image (``bench/out/bench-image.tar``, built by ``build_bench_image.py``) is squashed three times by
the ``optimize`` command: ``before`` as a squash was always written (one layer above the base, path order),
``pull`` with ``--pack pull`` (directories and small files first), and ``after`` with ``--pack pull
--layer-target-size SIZE`` (also cut into parts). Each goes to Debian's ``docker-registry`` on a free
127.0.0.1 port (pushed with skopeo) and is pulled the way Docker and containerd do it: up to three layer
downloads at a time, each streamed to disk, the layers extracted one after the other in manifest order by GNU
``tar`` (whiteouts are written as the empty files they are: this measures transfer and unpacking, not overlay
semantics). Two clients: ``verify`` extracts a layer once it is whole and its digest checked (what Docker and
containerd do), ``stream`` as its bytes arrive (tar reads what the HTTP stream has delivered so far).

Pulls are ``warm`` (the node has the base layer: only the squashed layer(s) are fetched, which is what the
packing of the layers we write is about), at loopback speed and with each connection capped at
``--link-mbps`` in the client (a registry or CDN's per-connection throughput, where parallel downloads of parts
pay), and ``cold-verify`` (every layer, loopback). Figures per variant, the median of ``--repeat`` runs:
seconds until tar starts the first regular file, seconds until the last layer is extracted, and CPU seconds
(this process and its tar children). The load average is printed: on a loaded machine compare the variants with
each other only.

Usage: .venv/bin/python bench/bench_pull.py [--repeat 3] [--target 64M] [--link-mbps 200] [--json FILE]
Needs docker-registry and skopeo (Debian packages), and the bench image.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import BENCH_IMAGE, human  # noqa: E402

OPTIMIZE = ROOT / ".venv" / "bin" / "optimize"
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
)
CONCURRENT_DOWNLOADS = 3  # Docker's and containerd's default
CHUNK = 1 << 16


@dataclass
class Pull:
    first_file: float  # seconds from the manifest request to the first regular file written
    total: float  # seconds to the last layer extracted
    cpu: float  # CPU seconds of this process (download threads and extraction)
    layers: int
    bytes: int


class _Download:
    """One layer streamed from the registry into a file; a reader can follow it while it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.digest = hashlib.sha256()
        self.size = 0
        self.done = False
        self.error: BaseException | None = None
        self.changed = threading.Condition()

    def run(self, host: str, url: str, rate: float | None) -> None:
        """Fetch ``url``; ``rate``: at most this many bytes per second on this connection (a registry or CDN
        link's per-connection throughput, simulated here), else as fast as loopback goes."""
        started = time.monotonic()
        try:
            connection = http.client.HTTPConnection(host, timeout=60)
            connection.request("GET", url)
            response = connection.getresponse()
            while response.status in (301, 302, 307):
                location = response.getheader("Location") or ""
                response.read()
                connection.request("GET", location)
                response = connection.getresponse()
            if response.status != 200:
                raise RuntimeError(f"GET {url}: HTTP {response.status}")
            with open(self.path, "wb") as out:
                while data := response.read(CHUNK):
                    out.write(data)
                    out.flush()
                    self.digest.update(data)
                    with self.changed:
                        self.size += len(data)
                        self.changed.notify_all()
                    if rate:
                        ahead = self.size / rate - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
            connection.close()
        except BaseException as error:  # handed to the extractor, which raises it
            self.error = error
        finally:
            with self.changed:
                self.done = True
                self.changed.notify_all()


class _Follow:
    """A file-like reader of a download that blocks until the bytes it wants have arrived."""

    def __init__(self, download: _Download) -> None:
        self.download = download
        self.handle: BinaryIO | None = None
        self.offset = 0

    def read(self, size: int = -1) -> bytes:
        want = CHUNK if size < 0 else size
        download = self.download
        with download.changed:
            while download.size <= self.offset and not download.done:
                download.changed.wait()
            if download.error is not None:
                raise download.error
            available = download.size - self.offset
        if available <= 0:
            return b""
        if self.handle is None:
            self.handle = open(download.path, "rb")  # noqa: SIM115 - closed by close()
        self.handle.seek(self.offset)
        data = self.handle.read(min(want, available))
        self.offset += len(data)
        return data

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()

    def verified(self, digest: str) -> None:
        """Wait for the whole download and check its digest, as Docker and containerd do before applying."""
        download = self.download
        with download.changed:
            while not download.done:
                download.changed.wait()
        if download.error is not None:
            raise download.error
        if "sha256:" + download.digest.hexdigest() != digest:
            raise RuntimeError(f"{digest}: the bytes downloaded do not match")


def _tar_flags(media_type: str) -> list[str]:
    if media_type.endswith("gzip"):
        return ["-z"]
    if media_type.endswith("zstd"):
        return ["--zstd"]
    return []


def _extract(follow: _Follow, media_type: str, rootfs: Path, on_file: Any) -> None:
    """Stream one layer into GNU tar as its bytes arrive; ``on_file`` when tar starts its first regular file.

    ``tar -vv`` prints a long listing line as it starts each member, ``-`` first for a regular file. Whiteouts
    are written as the empty files they are (this measures transfer and unpacking, not overlay semantics).
    """
    command = ["tar", "-x", "-vv", "-f", "-", "-C", str(rootfs), "--no-same-owner", *_tar_flags(media_type)]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert process.stdin is not None and process.stdout is not None

    def feed() -> None:
        assert process.stdin is not None
        try:
            while data := follow.read(CHUNK):
                process.stdin.write(data)
        finally:
            process.stdin.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    for line in process.stdout:
        if line.startswith(b"-"):
            on_file()
    feeder.join()
    if process.wait() != 0:
        raise RuntimeError(f"tar failed on a layer ({media_type})")


def _cpu() -> float:
    own = time.process_time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own + children.ru_utime + children.ru_stime


def pull(
    host: str, repository: str, tag: str, workdir: Path, skip: set[str], rate: float | None, streaming: bool
) -> Pull:
    """Pull ``repository:tag`` into ``workdir`` (layers whose digest is in ``skip`` are on the node): each layer
    extracted as its bytes arrive (``streaming``) or once it is whole and its digest checked."""
    started = time.monotonic()
    cpu_started = _cpu()
    connection = http.client.HTTPConnection(host, timeout=60)
    connection.request("GET", f"/v2/{repository}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES})
    manifest = json.loads(connection.getresponse().read())
    connection.close()
    layers = [layer for layer in manifest["layers"] if layer["digest"] not in skip]
    downloads = [_Download(workdir / f"layer-{number}") for number in range(len(layers))]
    gate = threading.Semaphore(CONCURRENT_DOWNLOADS)

    def fetch(download: _Download, digest: str) -> None:
        with gate:
            download.run(host, f"/v2/{repository}/blobs/{digest}", rate)

    threads = [
        threading.Thread(target=fetch, args=(download, layer["digest"]), daemon=True)
        for download, layer in zip(downloads, layers, strict=True)
    ]
    for thread in threads:
        thread.start()
    rootfs = workdir / "rootfs"
    rootfs.mkdir()
    first: list[float] = []

    def on_file() -> None:
        if not first:
            first.append(time.monotonic() - started)

    for download, layer in zip(downloads, layers, strict=True):
        follow = _Follow(download)
        try:
            if not streaming:
                follow.verified(layer["digest"])
            _extract(follow, layer["mediaType"], rootfs, on_file)
        finally:
            follow.close()
    for thread in threads:
        thread.join()
    total = time.monotonic() - started
    return Pull(
        first[0] if first else total,
        total,
        _cpu() - cpu_started,
        len(layers),
        sum(int(layer["size"]) for layer in layers),
    )


def _optimize(source: Path, out: Path, *flags: str) -> None:
    command = [str(OPTIMIZE), str(source), str(out), "--squash", "--passes", "none", "-q", *flags]
    subprocess.run(command, check=True)


def _push(archive: Path, host: str, reference: str) -> None:
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci-archive:{archive}",
            f"docker://{host}/{reference}",
        ],
        check=True,
    )


def _layers(archive: Path) -> list[dict[str, Any]]:
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        digest = index["manifests"][0]["digest"]
        manifest = json.load(tar.extractfile("blobs/" + digest.replace(":", "/")))  # type: ignore[arg-type]
    return list(manifest["layers"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--target", default="64M", help="--layer-target-size of the 'after' variant")
    parser.add_argument(
        "--link-mbps", type=float, default=200, help="per-connection cap of the capped warm pull, in Mbit/s"
    )
    parser.add_argument("--image", type=Path, default=BENCH_IMAGE)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if not args.image.is_file():
        print(f"{args.image} is missing: run bench/build_bench_image.py first", file=sys.stderr)
        return 2
    from tests.registry_fixtures import running_registry

    variants = {
        "before": (),
        "pull": ("--pack", "pull"),
        "after": ("--pack", "pull", "--layer-target-size", args.target),
    }
    rate = args.link_mbps * 1e6 / 8
    capped = f"{args.link_mbps:g}Mbit"
    # mode -> (skip the base layer, per-connection cap, streaming extraction)
    modes = {
        "verify": (True, None, False),
        f"verify-{capped}": (True, rate, False),
        "stream": (True, None, True),
        f"stream-{capped}": (True, rate, True),
        "cold-verify": (False, None, False),
    }
    figures: dict[str, Any] = {"load_average": os.getloadavg(), "target": args.target, "variants": {}}
    with (
        tempfile.TemporaryDirectory(prefix="bench-pull-") as scratch,
        running_registry(Path(scratch) / "registry") as registry,
    ):
        work = Path(scratch)
        for name, flags in variants.items():
            archive = work / f"{name}.tar"
            _optimize(args.image, archive, *flags)
            _push(archive, registry.host, f"bench:{name}")
            layers = _layers(archive)
            runs: dict[str, list[Pull]] = {mode: [] for mode in modes}
            for number in range(args.repeat):
                for mode, (warm, limit, streaming) in modes.items():
                    target = work / f"pull-{name}-{mode}-{number}"
                    target.mkdir()
                    skip = {layers[0]["digest"]} if warm else set()
                    runs[mode].append(pull(registry.host, "bench", name, target, skip, limit, streaming))
                    shutil.rmtree(target)
            figures["variants"][name] = {
                "flags": list(flags),
                "layers": [int(layer["size"]) for layer in layers],
                **{
                    mode: {
                        "first_file_s": round(statistics.median(p.first_file for p in found), 3),
                        "total_s": round(statistics.median(p.total for p in found), 3),
                        "cpu_s": round(statistics.median(p.cpu for p in found), 3),
                        "bytes": found[0].bytes,
                        "runs": [asdict(p) for p in found],
                    }
                    for mode, found in runs.items()
                },
            }
    figures["load_average_after"] = os.getloadavg()
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    for name, variant in figures["variants"].items():
        sizes = ", ".join(human(size) for size in variant["layers"])
        print(f"{name}: layers {sizes}")
        for mode in modes:
            found = variant[mode]
            print(
                f"  {mode}: {human(found['bytes'])}, first file {found['first_file_s']:.3f} s, "
                f"pull+extract {found['total_s']:.2f} s, CPU {found['cpu_s']:.2f} s"
            )
    print(f"load average {figures['load_average']} -> {figures['load_average_after']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Registry client benchmark (issue 7): pull and push of a ~50 MB image on loopback, and peak memory.

Starts Debian's ``docker-registry`` on a free 127.0.0.1 port (``tests/registry_fixtures.py``), builds an OCI
layout of ``--size`` MB of incompressible layers (40/8/2 split for 50 MB), then, each in a fresh child process
so that its peak RSS (``ru_maxrss``) is its own:

- ``baseline``: import the client and do nothing (the interpreter, requests, oras-py);
- ``push``: a fresh push (every blob uploaded, streamed from disk);
- ``push-again``: the same push to the same repository (every blob present: HEADs only);
- ``push-mount``: the same image to another repository, ``mount_from`` the first (cross-repo mounts);
- ``pull``: pull into a new layout (streamed to disk, digests verified);
- ``oras-upload``: for comparison only, oras-py's own ``upload_blob`` of the largest layer (it reads the
  whole blob into memory: the defect the client wraps).

The same runs at twice the size show that memory does not grow with the image (blobs are streamed).
Figures: wall seconds, MB/s, peak RSS and its excess over the baseline.

Usage: .venv/bin/python bench/bench_registry.py [--size 50] [--repeat 3] [--json FILE]
Exit status 1 when peak RSS over the baseline exceeds 64 MB (memory not flat).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_layout(path: Path, total_mb: int) -> Path:
    """An OCI layout with three incompressible layers (80/16/4 % of ``total_mb``)."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layers = []
    for share in (0.80, 0.16, 0.04):
        size = int(total_mb * share * (1 << 20))
        hasher = hashlib.sha256()
        temporary = blobs / "tmp"
        with open(temporary, "wb") as out:
            remaining = size
            while remaining:
                piece = os.urandom(min(remaining, 1 << 20))
                hasher.update(piece)
                out.write(piece)
                remaining -= len(piece)
        digest = "sha256:" + hasher.hexdigest()
        temporary.rename(blobs / digest[7:])
        layers.append(
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size}
        )

    def add(document: dict[str, object]) -> dict[str, object]:
        data = json.dumps(document, sort_keys=True).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (blobs / digest[7:]).write_bytes(data)
        return {"digest": digest, "size": len(data)}

    config = add({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    manifest = add(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
            "layers": layers,
        }
    )
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest}],
    }
    (path / "index.json").write_text(json.dumps(index))
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return path


def child(operation: str, host: str, layout: str, target: str, extra: str) -> None:
    """Run one operation in this (child) process and print its figures as JSON."""
    from optimizer.registry import Reference, RegistryClient

    client = RegistryClient(host, insecure=True, anonymous=True)
    stats = client.last_stats
    started = time.perf_counter()
    if operation == "push":
        client.push(layout, Reference.parse(f"{host}/{target}"), mount_from=extra or None)
        stats = client.last_stats
    elif operation == "pull":
        client.pull(Reference.parse(f"{host}/{target}"), layout)
        stats = client.last_stats
    elif operation == "oras-upload":
        # For comparison: oras-py's own upload_blob (its put_upload reads the whole blob into memory).
        import oras.provider

        blob = max(Path(layout, "blobs", "sha256").iterdir(), key=lambda p: p.stat().st_size)
        raw = oras.provider.Registry(hostname=host, insecure=True)
        layer = {"digest": f"sha256:{blob.name}", "size": blob.stat().st_size}
        answer = raw.upload_blob(str(blob), raw.get_container(f"{host}/{target}"), layer)
        assert answer.status_code == 201, answer.status_code
        stats.bytes_uploaded = blob.stat().st_size
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mb": peak_kb / 1024,
                "uploaded": stats.bytes_uploaded,
                "downloaded": stats.bytes_downloaded,
                "present": stats.blobs_present,
                "mounted": stats.blobs_mounted,
            }
        )
    )


def run_child(*arguments: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", *arguments],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=50, help="image size in MB (default 50)")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0

    from tests.registry_fixtures import start_registry

    results: dict[str, dict[str, dict[str, float]]] = {}
    worst_excess = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as scratch:
        work = Path(scratch)
        registry = start_registry(work / "registry")
        try:
            for size in (args.size, args.size * 2):
                layout = build_layout(work / f"image-{size}", size)
                total = sum(p.stat().st_size for p in (layout / "blobs" / "sha256").iterdir())
                figures: dict[str, dict[str, float]] = {}
                best: dict[str, dict[str, float]] = {}
                for attempt in range(args.repeat):
                    repo = f"bench/s{size}-r{attempt}"
                    runs = {
                        "baseline": run_child("none", registry.host, str(layout), repo, ""),
                        "push": run_child("push", registry.host, str(layout), f"{repo}:v1", ""),
                        "push-again": run_child("push", registry.host, str(layout), f"{repo}:v2", ""),
                        "push-mount": run_child("push", registry.host, str(layout), f"{repo}-m:v1", repo),
                        "pull": run_child(
                            "pull", registry.host, str(work / f"pulled-{size}-{attempt}"), f"{repo}:v1", ""
                        ),
                        "oras-upload": run_child(
                            "oras-upload", registry.host, str(layout), f"{repo}-oras", ""
                        ),
                    }
                    for name, figure in runs.items():
                        if name not in best or figure["seconds"] < best[name]["seconds"]:
                            best[name] = figure
                baseline = best["baseline"]["peak_rss_mb"]
                for name, figure in best.items():
                    figure = dict(figure)
                    figure["rss_over_baseline_mb"] = figure["peak_rss_mb"] - baseline
                    moved = figure["uploaded"] or figure["downloaded"]
                    figure["mb_per_s"] = (
                        (moved / (1 << 20)) / figure["seconds"] if moved and figure["seconds"] else 0.0
                    )
                    figures[name] = figure
                    if name not in ("baseline", "oras-upload"):
                        worst_excess = max(worst_excess, figure["rss_over_baseline_mb"])
                results[f"{size}MB"] = figures
                print(f"image {size} MB ({total / (1 << 20):.1f} MiB of blobs), best of {args.repeat}:")
                print(f"  {'operation':<12}{'seconds':>9}{'MB/s':>9}{'peak RSS':>11}{'over base':>11}  notes")
                for name, figure in figures.items():
                    notes = ""
                    if name.startswith("push"):
                        notes = f"{figure['present']:.0f} present, {figure['mounted']:.0f} mounted"
                    print(
                        f"  {name:<12}{figure['seconds']:>9.3f}{figure['mb_per_s']:>9.0f}"
                        f"{figure['peak_rss_mb']:>9.1f}MB{figure['rss_over_baseline_mb']:>9.1f}MB  {notes}"
                    )
        finally:
            registry.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    flat = worst_excess <= 64
    print(f"peak RSS over the baseline: at most {worst_excess:.1f} MB ({'flat' if flat else 'NOT flat'})")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())

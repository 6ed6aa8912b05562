"""compressed-duplicates benchmark (issue 11): what the pass and its server detection cost.

1. The bench image (``bench/out/bench-image.tar``): ``optimize --passes compressed-duplicates``; the report gives
   the pass's own seconds. Debian's ``.gz`` files have no twins, so the pass stops before reading any server.
2. A twin image, built here, one layer like a web host's: an nginx site
   whose root is a Capistrano symlink (``/var/www/current -> /srv/releases/2``) with ``--assets`` stylesheets,
   each with ``.gz`` and ``.br`` twins, in two releases; an express-static-gzip app with as many assets; and as
   many documentation files with ``.gz`` twins that no server sends. Run with server detection on and off
   (``--duplicates-ignore-nginx``, the flag both old and new trees take): the difference is what detection costs.

Each run is repeated (``--repeat``) and the best pass time kept; ``--tree DIR`` runs the ``optimizer`` and
``passes`` packages in DIR instead (``git archive <commit> optimizer passes | tar x -C DIR``) for before/after.
Figures go to stdout; the load average is printed before and after.

Usage: python bench/bench_compressed_duplicates.py [--image PATH] [--assets N] [--repeat N] [--tree DIR]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile
from pathlib import Path

import brotli

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_IMAGE, ROOT, measure

PYTHON = ROOT / ".venv" / "bin" / "python"
NGINX_CONF = b"http { gzip_static on; brotli_static on; server { listen 80; root /var/www/current; } }\n"
SERVER_JS = b'const e = require("express-static-gzip");\napp.use(e(__dirname + "/public"));\n'


def _asset(number: int) -> bytes:
    return b"".join(b".c%d-%d { margin: %dpx }\n" % (number, i, i % 17) for i in range(200))


def twin_files(assets: int) -> dict[str, bytes | str]:
    """path -> bytes, or "->target" for a symlink: the twin image's one layer."""
    files: dict[str, bytes | str] = {
        "etc/nginx/nginx.conf": NGINX_CONF,
        "var/www/current": "->/srv/releases/2",
        "app/server.js": SERVER_JS,
        "app/node_modules/express-static-gzip/package.json": b'{"name": "express-static-gzip"}',
    }
    for number in range(assets):
        data = _asset(number)
        packed, brotlied = gzip.compress(data, mtime=0), brotli.compress(data, quality=5)
        for where in ("srv/releases/1", "srv/releases/2", "app/public", "usr/share/doc/pkg"):
            files[f"{where}/f{number}.css"] = data
            files[f"{where}/f{number}.css.gz"] = packed
            if where != "usr/share/doc/pkg":
                files[f"{where}/f{number}.css.br"] = brotlied
    return files


def _layer(files: dict[str, bytes | str]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories = sorted({"/".join(p.split("/")[:n]) for p in files for n in range(1, p.count("/") + 1)})
        for directory in directories:
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.mode, info.mtime = 0o644, 1_700_000_000
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data[2:]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def write_image(path: Path, files: dict[str, bytes | str]) -> None:
    """A one-layer OCI archive (gzip layer), written with tarfile and json only."""
    blobs: dict[str, bytes] = {}

    def put(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return digest

    raw = _layer(files)
    layer = gzip.compress(raw, compresslevel=6, mtime=0)
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    layer_type = "application/vnd.oci.image.layer.v1.tar+gzip"
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": put(config),
                "size": len(config),
            },
            "layers": [{"mediaType": layer_type, "digest": put(layer), "size": len(layer)}],
        }
    ).encode()
    manifest_type = "application/vnd.oci.image.manifest.v1+json"
    index = {
        "schemaVersion": 2,
        "manifests": [{"mediaType": manifest_type, "digest": put(manifest), "size": len(manifest)}],
    }
    with tarfile.open(path, "w") as archive:
        members = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": json.dumps(index).encode()}
        members |= {"blobs/" + d.replace(":", "/"): data for d, data in blobs.items()}
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def run_pass(image: Path, tree: Path, extra: list[str], workdir: Path) -> tuple[float, float, dict[str, int]]:
    """(pass seconds, process CPU seconds, finding counts) of one ``--passes compressed-duplicates`` run."""
    report = workdir / "report.json"
    argv = [
        str(PYTHON),
        "-m",
        "optimizer",
        str(image),
        str(workdir / "out.tar"),
        "--passes",
        "compressed-duplicates",
    ]
    result = measure([*argv, *extra, "--dry-run", "--report", str(report), "-q"], cwd=tree)
    if result.returncode != 0:
        raise SystemExit(f"optimize failed: {result.stderr[-2000:]}")
    data = json.loads(report.read_text())
    (step,) = [p for p in data["images"][0]["passes"] if p["name"] == "compressed-duplicates"]
    counts: dict[str, int] = {}
    for finding in step.get("findings", []):
        counts[finding["action"]] = counts.get(finding["action"], 0) + 1
    return float(step["seconds"]), result.cpu_seconds, counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=BENCH_IMAGE)
    parser.add_argument("--assets", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tree", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    if not args.image.is_file():
        raise SystemExit(f"{args.image} not found: build it with bench/build_bench_image.py, or give --image")
    print(f"tree {args.tree}; load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="bench-duplicates-") as scratch:
        workdir = Path(scratch)
        twins = workdir / "twins.tar"
        write_image(twins, twin_files(args.assets))
        runs = [
            (f"bench image {args.image.name}", args.image, []),
            (f"twin image ({args.assets} assets x 4 places), servers read", twins, []),
            ("twin image, servers ignored (--duplicates-ignore-nginx)", twins, ["--duplicates-ignore-nginx"]),
        ]
        for label, image, extra in runs:
            figures = [run_pass(image, args.tree, extra, workdir) for _ in range(args.repeat)]
            best = min(figures)
            print(f"{label}: pass {best[0]:.3f} s (runs {', '.join(f'{f[0]:.3f}' for f in figures)}), "
                  f"process CPU {best[1]:.2f} s, findings {best[2]}")  # fmt: skip
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The media pass's cost (issue 15): its share of a default run and its savings, with the cost model's defaults
against the pass before it (``--media-png-level 4 --media-budget 0``), and its time per file against the count.

    .venv/bin/python bench/media_cost.py [--rounds 2] [--workers 2] [--only bench|web|scaling|fit]
    .venv/bin/python bench/bench_media.py --cost ...   (the same)

* ``bench``: a default ``optimize`` run of ``bench/out/bench-image.tar`` (built by build_bench_image.py) with
  each setting, alternated run by run (the first of a round alternates too): wall, the media pass's seconds and
  share of the run (both from the report), bytes it saved; and once a run with ``--skip media``, the rest.
* ``web``: the same on a web-asset image, the bench image plus one layer of every PNG, JPEG and GIF of
  bench_media's machine roots under ``/srv/www`` and an nginx configuration with ``root /srv/www;`` (so the
  reductions apply, as in a web app); built once into ``bench/out/web-asset-image.tar``. Also the bytes saved
  new/old (target: at least 90% kept) and the media pass's time new/old.
* ``scaling``: the pass alone (``bench_media.run_pass``, 2 workers, new defaults) on the first N of those files,
  N doubling: ms per file.
* ``fit``: the cost model's figures again on the machine's PNGs: seconds a call and per byte of decoded rows of
  each effort (``passes.media.cost.LADDER``), and how well ``expected_gain`` predicts the gain (the share of the
  savings lost and of the files skipped at some ``--media-min-gain`` thresholds).

Every figure comes with the load average at its start and end: the machine has 2 cores and other jobs.
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
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_media import DEFAULT_ROOTS, Item, collect, run_pass
from bench.common import BENCH_IMAGE, OUT, ROOT, measure

WEB_IMAGE = OUT / "web-asset-image.tar"
OLD = ("--media-png-level", "4", "--media-budget", "0")
NGINX = b"events {}\nhttp {\n    server {\n        listen 80;\n        root /srv/www;\n    }\n}\n"


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def _tar_bytes(files: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in sorted({str(Path(name).parent) for name, _ in files} | {"etc", "srv"}):
            parts = Path(directory).parts
            for depth in range(1, len(parts) + 1):
                name = "/".join(parts[:depth])
                if name not in tar.getnames():
                    info = tarfile.TarInfo(name)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def build_web_image(items: list[Item], destination: Path) -> None:
    """The bench image plus a layer of ``items`` under /srv/www and an nginx.conf rooted there."""
    files = [("etc/nginx/nginx.conf", NGINX)]
    files += [(f"srv/www/assets/{n:05d}-{Path(i.path).name}", i.data) for n, i in enumerate(items)]
    layer = _tar_bytes(files)
    blob = gzip.compress(layer, mtime=0)
    with tarfile.open(BENCH_IMAGE) as tar:
        read = {m.name: m for m in tar.getmembers()}
        index = json.loads(tar.extractfile(read["index.json"]).read())  # type: ignore[union-attr]
        manifest_name = "blobs/" + index["manifests"][0]["digest"].replace(":", "/")
        manifest = json.loads(tar.extractfile(read[manifest_name]).read())  # type: ignore[union-attr]
        config_name = "blobs/" + manifest["config"]["digest"].replace(":", "/")
        config = json.loads(tar.extractfile(read[config_name]).read())  # type: ignore[union-attr]
        config["rootfs"]["diff_ids"].append("sha256:" + hashlib.sha256(layer).hexdigest())
        config.setdefault("history", []).append({"created_by": "COPY assets /srv/www (bench/media_cost.py)"})
        new_blobs = {"layer": blob, "config": json.dumps(config, sort_keys=True).encode()}
        manifest["config"] = _descriptor(manifest["config"]["mediaType"], new_blobs["config"])
        manifest["layers"].append(_descriptor("application/vnd.oci.image.layer.v1.tar+gzip", blob))
        new_blobs["manifest"] = json.dumps(manifest, sort_keys=True).encode()
        index["manifests"][0].update(_descriptor(index["manifests"][0]["mediaType"], new_blobs["manifest"]))
        partial = destination.with_suffix(".partial")
        with tarfile.open(partial, "w") as out:
            for member in tar.getmembers():
                if member.name not in (manifest_name, config_name, "index.json"):
                    out.addfile(member, tar.extractfile(member) if member.isfile() else None)
            for data in new_blobs.values():
                info = tarfile.TarInfo("blobs/sha256/" + hashlib.sha256(data).hexdigest())
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))
            text = json.dumps(index).encode()
            info = tarfile.TarInfo("index.json")
            info.size = len(text)
            out.addfile(info, io.BytesIO(text))
    partial.rename(destination)


def _descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }


def default_run(image: Path, flags: tuple[str, ...], workers: int, workdir: str) -> dict[str, float]:
    """One default ``optimize`` run through the CLI: wall, the run's and the media pass's seconds and saving."""
    out, report = os.path.join(workdir, "out.tar"), os.path.join(workdir, "report.json")
    command = [str(ROOT / ".venv" / "bin" / "optimize"), str(image), out, "--report", report,
               "--workers", str(workers), "-q", *flags]  # fmt: skip
    result = measure(command)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)}: exit {result.returncode}")
    with open(report) as handle:
        data = json.load(handle)
    media = [p for image in data["images"] for p in image["passes"] if p["name"] == "media"]
    os.unlink(out)
    return {
        "wall": result.seconds,
        "run": float(data["seconds"]),
        "media": sum(float(p["seconds"]) for p in media),
        "saved": sum(int(p["bytes_before"]) - int(p["bytes_after"]) for p in media),
        "files": sum(int(p["files_changed"]) for p in media),
    }


def compare_runs(name: str, image: Path, rounds: int, workers: int, workdir: str) -> None:
    """Old and new settings alternated run by run; medians of the rounds."""
    runs: dict[str, list[dict[str, float]]] = {"new": [], "old": []}
    start = load()
    base = default_run(image, ("--skip", "media"), workers, workdir)  # the rest of the run
    print(f"  {name} without media: run {base['run']:.1f} s, load {load()}", flush=True)
    for number in range(rounds):
        for setting in ("new", "old") if number % 2 == 0 else ("old", "new"):
            runs[setting].append(default_run(image, () if setting == "new" else OLD, workers, workdir))
            figures = runs[setting][-1]
            print(f"  {name} {setting}: wall {figures['wall']:.1f} s, media {figures['media']:.2f} s "
                  f"({100 * figures['media'] / figures['run']:.1f}% of {figures['run']:.1f} s), "
                  f"saved {figures['saved']:,.0f} B in {figures['files']:.0f} files, load {load()}", flush=True)  # fmt: skip

    def median(setting: str, key: str) -> float:
        values = sorted(r[key] for r in runs[setting])
        return values[len(values) // 2] if len(values) % 2 else sum(values[len(values) // 2 - 1 :][:2]) / 2

    print(f"== {name}, default run, {workers} workers, median of {rounds} (load {start} -> {load()}):")
    for setting in ("new", "old"):
        share = 100 * median(setting, "media") / median(setting, "run")
        print(f"  {setting}: run {median(setting, 'run'):.1f} s, media pass {median(setting, 'media'):.2f} s "
              f"= {share:.1f}% of the run, saved {median(setting, 'saved'):,.0f} B")  # fmt: skip
    old_saved, old_media = median("old", "saved"), median("old", "media")
    kept = f"{100 * median('new', 'saved') / old_saved:.1f}%" if old_saved else "- (nothing saved by either)"
    print(f"  new/old: savings kept {kept}, media pass time {median('new', 'media') / old_media:.2f}x")


def scaling(items: list[Item], workers: int, workdir: str) -> None:
    from passes.media import MediaOptions

    options = MediaOptions(reduce="always")  # as under a web root
    print(f"== time per file against the count (pass alone, {workers} workers, new defaults, load {load()})")
    count = 250
    while True:
        chosen = items[:: max(1, len(items) // count)][:count]
        scratch = tempfile.mkdtemp(dir=workdir)
        seconds, *_ = run_pass(chosen, workers, options, scratch)
        size = sum(len(i.data) for i in chosen)
        print(f"  {len(chosen):5} files ({size / 2**20:5.1f} MiB): {seconds:6.2f} s, "
              f"{1000 * seconds / len(chosen):5.2f} ms per file, load {load()}", flush=True)  # fmt: skip
        if count >= len(items):
            break
        count = min(count * 2, len(items))


def fit(items: list[Item]) -> None:
    """The cost model's figures measured again, one core, calling oxipng as the pass does."""
    import numpy as np
    import oxipng

    from passes.media import MediaOptions, optimize
    from passes.media.cost import LADDER, expected_gain, raw_bytes
    from passes.media.png import png_structure

    pngs = []
    for item in (i for i in items if i.kind == "png"):
        try:
            pngs.append((item.data, png_structure(item.data, 1 << 30)))
        except Exception:  # corrupt files: the pass leaves them alone
            continue
    os.environ["RAYON_NUM_THREADS"] = "1"  # as in a pool worker
    print(f"== cost model fit: {len(pngs)} PNGs, one core (load {load()})")
    for effort in LADDER:
        # the dearest efforts on fewer files (level 6 takes seconds a large file)
        chosen = pngs[:: 4 if effort.level < 5 else 16]
        rows: list[tuple[int, float]] = []
        for data, info in chosen:
            kwargs = {"level": effort.level, **effort.deflater()}
            started = time.perf_counter()
            oxipng.optimize_from_memory(data, **kwargs)
            rows.append((raw_bytes(info), time.perf_counter() - started))
        small = [t for r, t in rows if r < 16 << 10]
        large = [(r, t) for r, t in rows if r >= 256 << 10]
        per_byte = sum(t for _, t in large) / max(1, sum(r for r, _ in large))
        worst = max((t / (r * per_byte) for r, t in large), default=0.0)
        print(f"  {effort.describe():22} {len(rows):5} files: {1000 * float(np.median(small)):.2f} ms a small call "
              f"(model {1000 * effort.fixed:.2f}), {per_byte * 1e9:.0f} ns per byte of rows (model "
              f"{effort.per_byte * 1e9:.0f}; slowest file {worst:.1f}x), load {load()}", flush=True)  # fmt: skip
    options = MediaOptions(reduce="always")
    pairs = []
    for data, info in pngs[::2]:
        result = optimize(data, options)
        pairs.append((expected_gain(info), len(data) - len(result.data) if result.data else 0))
    expected, actual = np.array(pairs, dtype=float).T
    ranks = np.corrcoef(np.argsort(np.argsort(expected)), np.argsort(np.argsort(actual)))[0, 1]
    print(f"  expected_gain against the gain of the default effort, {len(pairs)} PNGs: rank correlation "
          f"{ranks:.2f}; total expected {expected.sum():,.0f} B, actual {actual.sum():,.0f} B")  # fmt: skip
    for threshold in (64, 128, 256, 512, 1024):
        skip = expected < threshold
        print(f"    --media-min-gain {threshold:5}: skips {100 * skip.mean():4.1f}% of the files, loses "
              f"{100 * actual[skip].sum() / actual.sum():4.1f}% of the savings")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2, help="runs of each setting (alternated)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", choices=("bench", "web", "scaling", "fit"), action="append")
    args = parser.parse_args(argv)
    parts = args.only or ["bench", "web", "scaling"]
    if not BENCH_IMAGE.exists():
        print(f"{BENCH_IMAGE} not found: build it with bench/build_bench_image.py (as root)")
        return 1
    items = collect([r for r in DEFAULT_ROOTS if os.path.isdir(r)], 100_000)
    with tempfile.TemporaryDirectory(prefix="media-cost-") as workdir:
        if "bench" in parts:
            compare_runs("bench image", BENCH_IMAGE, args.rounds, args.workers, workdir)
        if "web" in parts:
            if not WEB_IMAGE.exists():
                started = time.monotonic()
                build_web_image(items, WEB_IMAGE)
                print(f"built {WEB_IMAGE} in {time.monotonic() - started:.0f} s")
            size = sum(len(i.data) for i in items)
            print(
                f"web-asset image: {len(items)} media files, {size:,} B ({size / 2**20:.1f} MiB) under /srv/www"
            )
            compare_runs("web-asset image", WEB_IMAGE, args.rounds, args.workers, workdir)
        if "scaling" in parts:
            scaling(items, args.workers, workdir)
        if "fit" in parts:
            fit(items)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

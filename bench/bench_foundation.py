"""Foundation benchmark (issue 2): repack speed against the zlib floor, and peak memory.

On ``bench/out/bench-image.tar`` (build it with ``bench/build_bench_image.py``) it measures:

- the floor: in this one process, every layer decompressed and recompressed with the zlib and level the
  writer uses (level 6, raw deflate ``wbits=-15``, ``memLevel=9``, 1 MiB chunks), output discarded;
- ``optimize --normalize --passes none`` (every layer rewritten canonically) as a subprocess: wall time, the
  peak RSS of its largest process (``wait4`` rusage) and of its whole process tree (sampled every 20 ms);
- ``optimize --passes none`` (a pure repack: layers copied byte for byte);
- the same two runs on ``bench/out/small-image.tar``, and a ``--normalize`` run on
  ``bench/out/many-files-image.tar`` (250,000 small files) when it was built, to show how peak memory
  grows with the image (it should not, beyond the per-entry index).

Targets (issue 2): normalize run <= 1.3x the floor; peak memory <= 300 MB whatever the image size.
Each figure is the best of ``--repeat`` runs (the page cache is warmed first).

Usage: python bench/bench_foundation.py [--repeat N] [--image PATH] [--small PATH] [--json FILE]
Exit status 1 when a target is missed, so it can gate a CI job if the lead wants.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BENCH_IMAGE,
    CHUNK,
    MANY_FILES_IMAGE,
    OUT,
    ROOT,
    SMALL_IMAGE,
    Measured,
    human,
    image_layers,
    measure,
    open_member,
    raw_stream,
)

OPTIMIZE = ROOT / ".venv" / "bin" / "optimize"
PYTHON = ROOT / ".venv" / "bin" / "python"
RATIO_TARGET = 1.3
MEMORY_TARGET = 300 * 1000 * 1000  # "300 MB"
GZIP_LEVEL = 6


@dataclass(frozen=True)
class Floor:
    seconds: float
    cpu_seconds: float
    raw_bytes: int
    compressed_in: int
    compressed_out: int


def floor(archive: Path, with_hashes: bool = False) -> Floor:
    """Decompress and recompress every layer, in this process, as the layer writer would (output discarded).

    ``with_hashes`` adds what any correct repack must also do: sha256 of the input blob (verification), of
    the tar stream (diff_id) and of the output blob (digest), plus the gzip trailer's crc32.
    """
    started, cpu = time.monotonic(), time.process_time()
    raw_total = out_total = in_total = 0
    for layer in image_layers(archive):
        deflater = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS, 9)
        digests = (hashlib.sha256(), hashlib.sha256(), hashlib.sha256())
        crc = 0
        with open_member(archive, layer.member) as member:
            reader = _Hashing(member, digests[0]) if with_hashes else member
            for chunk in raw_stream(reader, layer.codec):
                raw_total += len(chunk)
                packed = deflater.compress(chunk)
                out_total += len(packed)
                if with_hashes:
                    crc = zlib.crc32(chunk, crc)
                    digests[1].update(chunk)
                    digests[2].update(packed)
        out_total += len(deflater.flush())
        in_total += layer.size
    return Floor(time.monotonic() - started, time.process_time() - cpu, raw_total, in_total, out_total)


class _Hashing:
    def __init__(self, reader: Any, digest: Any) -> None:
        self._reader = reader
        self._digest = digest

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._reader.read(size)
        self._digest.update(data)
        return data


def run_optimize(
    image: Path, extra: list[str], workdir: Path, tree: Path | None = None
) -> tuple[Measured, dict[str, Any]]:
    """One ``optimize`` run; ``tree`` runs another checkout's ``optimizer`` package (for A/B comparisons)."""
    output = workdir / "out.tar"
    report = workdir / "report.json"
    program = [str(OPTIMIZE)] if tree is None else [str(PYTHON), "-m", "optimizer"]
    env = None if tree is None else dict(os.environ, PYTHONPATH=str(tree))
    # `python -m` puts the working directory first on sys.path: run in ``tree`` so its package is the one used.
    command = [
        *program,
        str(image),
        str(output),
        "-q",
        "--report",
        str(report),
        "--workdir",
        str(workdir),
        *extra,
    ]
    measured = measure(command, env, cwd=tree)
    if measured.returncode != 0:
        raise SystemExit(f"`{' '.join(command)}` failed ({measured.returncode}):\n{measured.stderr[-3000:]}")
    data: dict[str, Any] = json.loads(report.read_text())
    data["output_size"] = output.stat().st_size
    output.unlink()
    report.unlink()
    return measured, data


@dataclass
class Row:
    """Best (lowest) times over the repeats; highest memory peaks (memory is a bound, not a best case)."""

    seconds: float = float("inf")
    cpu_seconds: float = float("inf")
    max_rss: int = 0
    tree_rss: int = 0
    layers: str = ""
    bytes_after: int = 0  # compressed layers written (the report's bytes_after)

    def add(self, measured: Measured, report: dict[str, Any]) -> None:
        self.seconds = min(self.seconds, measured.seconds)
        self.cpu_seconds = min(self.cpu_seconds, measured.cpu_seconds)
        self.max_rss = max(self.max_rss, measured.max_rss)
        self.tree_rss = max(self.tree_rss, measured.tree_rss)
        self.layers = layer_statuses(report)
        self.bytes_after = int(report.get("bytes_after", 0))


def layer_statuses(report: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for image in report.get("images", []):
        for layer in image["layers"]:
            counts[layer["status"]] = counts.get(layer["status"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def warm(path: Path) -> None:
    with open(path, "rb") as handle:
        while handle.read(CHUNK * 8):
            pass


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


PLAN = (
    ("big: --normalize --passes none", "big", ["--normalize", "--passes", "none"]),
    ("big: --passes none", "big", ["--passes", "none"]),
    ("small: --normalize --passes none", "small", ["--normalize", "--passes", "none"]),
    ("small: --passes none", "small", ["--passes", "none"]),
    ("many: --normalize --passes none", "many", ["--normalize", "--passes", "none"]),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="foundation benchmark: repack vs zlib floor, peak memory")
    parser.add_argument("--image", type=Path, default=BENCH_IMAGE)
    parser.add_argument("--small", type=Path, default=SMALL_IMAGE)
    parser.add_argument(
        "--many", type=Path, default=MANY_FILES_IMAGE, help="the many-small-files image (memory), if built"
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every measurement; best time kept")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    parser.add_argument(
        "--tree",
        type=Path,
        help="run the optimizer package found in this directory (e.g. a `git archive` of a commit)",
    )
    args = parser.parse_args(argv)
    args.image, args.small, args.many = args.image.resolve(), args.small.resolve(), args.many.resolve()
    args.tree = args.tree.resolve() if args.tree else None
    images = {"big": args.image, "small": args.small}
    if args.many.is_file():
        images["many"] = args.many
    for image in images.values():
        if not image.is_file():
            print(
                f"{image} not found: run `python bench/build_bench_image.py` first (as root)", file=sys.stderr
            )
            return 2
    if not OPTIMIZE.is_file():
        print(f"{OPTIMIZE} not found: install the project in .venv", file=sys.stderr)
        return 2

    layers = image_layers(args.image)
    print(
        f"image: {args.image} ({human(args.image.stat().st_size)}, {len(layers)} layers), cores: {os.cpu_count()}"
    )
    print(f"optimizer: {args.tree or 'the project (.venv)'}, nice: {os.nice(0)}")
    print(
        f"zlib {zlib.ZLIB_RUNTIME_VERSION}, python {sys.version.split()[0]}, load average before: {load_average()}"
    )
    for image in images.values():
        warm(image)

    floors: list[Floor] = []
    hashed: list[Floor] = []
    plan = [(label, which, extra) for label, which, extra in PLAN if which in images]
    rows = {label: Row() for label, _, _ in plan}
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-", dir=OUT) as scratch:
        # Rounds interleave the floor and the runs, so a busy machine slows them alike.
        for _ in range(args.repeat):
            floors.append(floor(args.image))
            hashed.append(floor(args.image, with_hashes=True))
            for label, which, extra in plan:
                rows[label].add(*run_optimize(images[which], extra, Path(scratch), args.tree))
    base = Floor(
        min(f.seconds for f in floors),
        min(f.cpu_seconds for f in floors),
        floors[0].raw_bytes,
        floors[0].compressed_in,
        floors[0].compressed_out,
    )
    with_hashes = min(hashed, key=lambda f: f.seconds)

    mib = 1024 * 1024
    print(f"load average after: {load_average()}")
    print()
    print(
        f"uncompressed layers: {human(base.raw_bytes)}; compressed in: {human(base.compressed_in)}; "
        f"floor output: {human(base.compressed_out)}"
    )
    header = f"{'measurement':<34}{'wall s':>8}{'x floor':>9}{'cpu s':>8}{'x floor':>9}{'max RSS':>10}{'tree RSS':>10}"
    print(header + "  layers")
    print(
        f"{'floor (inflate + deflate -6)':<34}{base.seconds:>8.2f}{1.0:>9.2f}{base.cpu_seconds:>8.2f}{1.0:>9.2f}"
        f"{'-':>10}{'-':>10}"
    )
    print(
        f"{'floor + sha256 x3 + crc32':<34}{with_hashes.seconds:>8.2f}{with_hashes.seconds / base.seconds:>9.2f}"
        f"{with_hashes.cpu_seconds:>8.2f}{with_hashes.cpu_seconds / base.cpu_seconds:>9.2f}{'-':>10}{'-':>10}"
    )
    for label, row in rows.items():
        big = label.startswith("big")
        wall_ratio = f"{row.seconds / base.seconds:.2f}" if big else "-"
        cpu_ratio = f"{row.cpu_seconds / base.cpu_seconds:.2f}" if big else "-"
        print(
            f"{label:<34}{row.seconds:>8.2f}{wall_ratio:>9}{row.cpu_seconds:>8.2f}{cpu_ratio:>9}"
            f"{row.max_rss / mib:>6.0f} MiB{row.tree_rss / mib:>6.0f} MiB  {row.layers}, {human(row.bytes_after)}"
        )

    normalize = rows["big: --normalize --passes none"]
    ratio = normalize.seconds / base.seconds
    peak = max(max(row.max_rss, row.tree_rss) for row in rows.values())
    ratio_ok = ratio <= RATIO_TARGET
    memory_ok = peak <= MEMORY_TARGET
    print()
    print(
        f"target: --normalize run <= {RATIO_TARGET}x floor (wall): {ratio:.2f}x -> {'OK' if ratio_ok else 'MISSED'}"
        f" (cpu: {normalize.cpu_seconds / base.cpu_seconds:.2f}x)"
    )
    print(
        f"target: peak memory <= 300 MB: {peak / 1e6:.0f} MB (largest process or tree, all runs) -> "
        f"{'OK' if memory_ok else 'MISSED'}"
    )
    if args.json:
        figures = {
            "floor": base.__dict__,
            "floor_with_hashes": with_hashes.__dict__,
            "runs": {label: row.__dict__ for label, row in rows.items()},
            "ratio_wall": ratio,
            "ratio_cpu": normalize.cpu_seconds / base.cpu_seconds,
            "peak_memory": peak,
        }
        args.json.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return 0 if ratio_ok and memory_ok else 1


if __name__ == "__main__":
    sys.exit(main())

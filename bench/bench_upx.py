"""UPX detection benchmark (issue 5): what sniffing for UPX costs, per file and on a whole run.

1. Host tree: every regular file under /usr/bin, /usr/sbin, /usr/lib, /usr/libexec (thousands of real ELF files,
   scripts, data) goes through ``detect_upx_content``'s path: read the first 4 KiB, and the last 8 KiB only when
   the head looks like an executable. Figures: files, bytes, files flagged (must be 0 apart from real UPX files),
   detector time per file and in total, against reading every byte of the same files (what a naive detector
   searching for "UPX!" would at least do). Page cache warm in both cases.
2. The bench image (``bench/out/bench-image.tar``, from ``bench/build_bench_image.py``): ``optimize --passes upx``
   as a subprocess; the report gives the pass's own seconds, compared with the foundation run that reads and
   rewrites every layer (``--normalize --passes none``) and with the rest of the same run (reading and indexing
   every layer, which any pass needs). Target: under 5% of either. Also: files flagged on the bench image (0).
3. With ``--full``: the default pipeline with and without the upx pass (``--skip upx``), wall time.

Usage: python bench/bench_upx.py [--image PATH] [--repeat N] [--full] [--roots DIR ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import BENCH_IMAGE, OUT, ROOT, human, measure

from passes.upx import HEAD_SIZE, TAIL_SIZE, detect_upx_parts

OPTIMIZE = ROOT / ".venv" / "bin" / "optimize"
TARGET = 0.05
ROOTS = ("/usr/bin", "/usr/sbin", "/usr/lib", "/usr/libexec")
EXEC_MAGICS = (b"\x7fELF", b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe", b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf")


def host_files(roots: list[str]) -> list[tuple[str, int]]:
    found = []
    for root in roots:
        for directory, _, names in os.walk(root):
            for name in names:
                path = os.path.join(directory, name)
                try:
                    if os.path.islink(path) or not os.path.isfile(path):
                        continue
                    found.append((path, os.path.getsize(path)))
                except OSError:
                    continue
    return sorted(found)


def sniff(path: str, size: int) -> Any:
    """What the pass does per file (``detect_upx_content``), on a host file."""
    if size < 64:
        return None
    with open(path, "rb") as handle:
        head = handle.read(HEAD_SIZE)
        if not (head[:4] in EXEC_MAGICS or head[:2] == b"MZ" or head[:4] == b"\xca\xfe\xba\xbe"):
            return None
        handle.seek(max(0, size - TAIL_SIZE))
        tail = handle.read(TAIL_SIZE)
    return detect_upx_parts(head, tail, size)


def read_all(path: str) -> int:
    with open(path, "rb") as handle:
        return sum(len(chunk) for chunk in iter(lambda: handle.read(1 << 20), b""))


def bench_host(roots: list[str], repeat: int) -> None:
    files = host_files(roots)
    total = sum(size for _, size in files)
    print(f"host tree {', '.join(roots)}: {len(files)} regular files, {human(total)}")
    for path, _ in files:  # warm the page cache
        with contextlib.suppress(OSError):
            read_all(path)
    best_sniff = best_read = float("inf")
    flagged: list[tuple[str, Any]] = []
    readable = [(p, s) for p, s in files if os.access(p, os.R_OK)]
    for _ in range(repeat):
        started = time.perf_counter()
        flagged = [(p, info) for p, s in readable if (info := sniff(p, s)) is not None]
        best_sniff = min(best_sniff, time.perf_counter() - started)
        started = time.perf_counter()
        for path, _ in readable:
            read_all(path)
        best_read = min(best_read, time.perf_counter() - started)
    elf = 0
    for path, _size in readable:
        with open(path, "rb") as handle:
            elf += handle.read(4) == b"\x7fELF"
    print(f"  ELF files: {elf}")
    print(
        f"  sniff (head, tail of executables, detect): {best_sniff:.3f} s = {1e6 * best_sniff / len(readable):.1f} us/file"
    )
    print(
        f"  reading every byte (naive floor):          {best_read:.3f} s = {1e6 * best_read / len(readable):.1f} us/file"
    )
    print(f"  flagged as UPX-packed: {len(flagged)}")
    for path, info in flagged:
        print(f"    {path}: {info.describe()}")


def run(image: Path, extra: list[str]) -> tuple[float, dict[str, Any]]:
    with tempfile.TemporaryDirectory(dir=OUT, prefix="bench-upx-") as work:
        report = Path(work) / "report.json"
        command = [str(OPTIMIZE), str(image), str(Path(work) / "out.tar"), "-q", "--report", str(report)]
        command += ["--workdir", work, *extra]
        measured = measure(command)
        if measured.returncode != 0:
            raise SystemExit(
                f"`{' '.join(command)}` failed ({measured.returncode}):\n{measured.stderr[-3000:]}"
            )
        return measured.seconds, json.loads(report.read_text())


def pass_seconds(report: dict[str, Any], name: str) -> float:
    return sum(p["seconds"] for image in report["images"] for p in image["passes"] if p["name"] == name)


def bench_image(image: Path, repeat: int, full: bool) -> bool:
    if not image.exists():
        print(f"{image} is missing: build it with bench/build_bench_image.py")
        return False
    print(f"bench image {image} ({human(image.stat().st_size)})")
    foundation = min(run(image, ["--normalize", "--passes", "none"])[0] for _ in range(repeat))
    best_wall, best_pass, report = float("inf"), float("inf"), {}
    for _ in range(repeat):
        seconds, report = run(image, ["--passes", "upx"])
        best_wall = min(best_wall, seconds)
        best_pass = min(best_pass, pass_seconds(report, "upx"))
    files = sum(
        1
        for image_ in report["images"]
        for p in image_["passes"]
        if p["name"] == "upx"
        for _ in p["findings"]
    )
    share = best_pass / foundation
    indexing = best_wall - best_pass  # the same run without the pass: read and index every layer
    share_of_indexing = best_pass / indexing
    print(f"  foundation run (--normalize --passes none): {foundation:.2f} s")
    print(
        f"  --passes upx: {best_wall:.2f} s wall (index every layer, then the pass); the upx pass: {best_pass:.3f} s"
    )
    print(f"  upx pass / foundation run: {100 * share:.2f}% (target < {100 * TARGET:.0f}%)")
    print(f"  upx pass / the indexing that any pass needs ({indexing:.2f} s): {100 * share_of_indexing:.2f}%")
    print(f"  files flagged on the bench image: {files} (must be 0)")
    ok = max(share, share_of_indexing) < TARGET and files == 0
    if full:
        with_upx = min(run(image, [])[0] for _ in range(repeat))
        without = min(run(image, ["--skip", "upx"])[0] for _ in range(repeat))
        print(
            f"  default passes: {with_upx:.2f} s; --skip upx: {without:.2f} s; difference {with_upx - without:+.2f} s"
        )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="UPX detection overhead")
    parser.add_argument("--image", type=Path, default=BENCH_IMAGE)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="also the default pipeline with and without upx")
    parser.add_argument("--roots", nargs="*", default=list(ROOTS))
    parser.add_argument("--skip-image", action="store_true")
    args = parser.parse_args(argv)
    bench_host([r for r in args.roots if os.path.isdir(r)], args.repeat)
    if args.skip_image:
        return 0
    return 0 if bench_image(args.image, args.repeat, args.full) else 1


if __name__ == "__main__":
    sys.exit(main())

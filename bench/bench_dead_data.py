"""Dead-data benchmark (issue 8): bytes to pull before and after on the bench image, by pass.

On ``bench/out/bench-image.tar`` (its layer 2 runs ``apt-get update``, its layer 6 deletes the apt lists):

1. bytes to pull (the sum of the compressed layers) before, then after each pass run alone, after the full
   default pipeline (gzip and zstd), and after ``--squash`` above the first layer; each run with
   ``--dry-run`` (layers are still written to the work directory, so the sizes are the real ones);
2. the repack floor: ``--passes none --normalize`` rewrites every layer with our gzip and nothing else, so
   the difference between it and the input is what the compressor alone changes (not a pass's doing);
3. dead-data's own figures per layer (dead bytes found, removed) and the duplicate report (reclaimable
   beyond one copy, and dive's every-copy count);
4. the check that the dead bytes are gone: a real dead-data run, then every output layer listed: no file
   under ``var/lib/apt/lists/`` is left in any layer (the input has them in layer 2).

Usage: python bench/bench_dead_data.py [--image PATH] [--passes a,b] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_IMAGE, ROOT, human, image_layers, measure, open_member, raw_stream

OPTIMIZE = str(ROOT / ".venv" / "bin" / "optimize")
PYTHON = str(ROOT / ".venv" / "bin" / "python")
APT_LISTS = "var/lib/apt/lists/"

SQUASH_SCRIPT = """
import json, sys
from dataclasses import replace
from optimizer.cli import build_parser, options_from_args
from optimizer import optimize
args = build_parser().parse_args(sys.argv[1:4] + ["--dry-run"])
options = replace(options_from_args(args), squash=True, keep_layers=1)
report = optimize(sys.argv[1], None, options)
open(sys.argv[4], "w").write(json.dumps(report.to_json()))
"""


def run(label: str, arguments: list[str], workdir: Path) -> dict[str, Any]:
    report_path = workdir / "report.json"
    command = [OPTIMIZE, *arguments, "--report", str(report_path), "-q", "--workdir", str(workdir)]
    measured = measure(command)
    if measured.returncode != 0:
        raise SystemExit(f"{label}: {' '.join(command)} failed:\n{measured.stderr}")
    report = json.loads(report_path.read_text())
    report_path.unlink()
    return {"label": label, "seconds": measured.seconds, "report": report}


def squash_run(image: Path, workdir: Path) -> dict[str, Any]:
    report_path = workdir / "squash.json"
    measured = measure([PYTHON, "-c", SQUASH_SCRIPT, str(image), "unused", "--passes=none", str(report_path)])
    if measured.returncode != 0:
        raise SystemExit(f"squash run failed:\n{measured.stderr}")
    return {
        "label": "--squash above layer 1, no pass",
        "seconds": measured.seconds,
        "report": json.loads(report_path.read_text()),
    }


def pull_bytes(report: dict[str, Any]) -> int:
    return sum(layer["size_after"] for layer in report["images"][0]["layers"])


def dead_data_figures(report: dict[str, Any]) -> list[dict[str, Any]]:
    passes = {p["name"]: p for p in report["images"][0]["passes"]}
    findings = passes["dead-data"]["findings"]
    rows = [f["details"] for f in findings if f["action"] == "layer"]
    rows += [f["details"] | {"duplicates": True} for f in findings if f["action"] == "duplicates"]
    return rows


def apt_lists_left(archive: Path) -> tuple[int, int]:
    """(files under var/lib/apt/lists/ in any layer, their bytes)."""
    count = size = 0
    for layer in image_layers(archive):
        with open_member(archive, layer.member) as reader:
            stream = _Chunks(raw_stream(reader, layer.codec))
            with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    name = member.name.removeprefix("./")
                    if name.startswith(APT_LISTS) and member.isfile() and "/.wh." not in "/" + name:
                        count += 1
                        size += member.size
    return count, size


class _Chunks:
    def __init__(self, chunks: Any) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, default=BENCH_IMAGE)
    parser.add_argument(
        "--passes",
        default="dead-data,strip-elf,media,compressed-duplicates,upx,inject",
        help="the passes to measure one by one",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    if not args.image.exists():
        print(f"{args.image} not found: run bench/build_bench_image.py first", file=sys.stderr)
        return 2
    image = str(args.image)
    before = sum(layer.size for layer in image_layers(args.image))
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-dead-data-", dir=args.image.parent) as directory:
        workdir = Path(directory)
        runs.append(
            run(
                "repack floor: --passes none --normalize",
                [image, "--dry-run", "--passes", "none", "--normalize"],
                workdir,
            )
        )
        for name in args.passes.split(","):
            runs.append(run(f"--passes {name}", [image, "--dry-run", "--passes", name], workdir))
        runs.append(run("every pass (default), gzip", [image, "--dry-run"], workdir))
        runs.append(run("every pass (default), zstd", [image, "--dry-run", "--compression", "zstd"], workdir))
        runs.append(squash_run(args.image, workdir))
        out = workdir / "dead-data.tar"
        real = run("dead-data, written", [image, str(out), "--passes", "dead-data"], workdir)
        left_before = apt_lists_left(args.image)
        left_after = apt_lists_left(out)
    print(
        f"bytes to pull on {args.image.name}: {human(before)} ({before} bytes) before; {os.cpu_count()} cores"
    )
    print(f"  {'run':<42}{'after':>12}{'saved':>12}{'saved %':>9}{'wall s':>8}")
    for item in runs:
        after = pull_bytes(item["report"])
        print(
            f"  {item['label']:<42}{human(after):>12}{human(before - after):>12}"
            f"{100.0 * (before - after) / before:>8.1f}%{item['seconds']:>8.1f}"
        )
    print("dead-data per layer (raw bytes):")
    for row in dead_data_figures(real["report"]):
        if row.get("duplicates"):
            print(
                f"  duplicates: {row['groups']} groups, {human(row['reclaimable_bytes'])} reclaimable beyond one "
                f"copy each ({human(row['every_copy_bytes'])} counting every copy, as dive does)"
            )
        else:
            print(
                f"  layer {row['layer'] + 1}: {human(row['dead_bytes'])} dead found, {human(row['removed_bytes'])} "
                f"removed, {row['dropped_entries']} entries and {row['stale_whiteouts']} stale whiteouts dropped"
                + (" (protected: reclaimable)" if row["protected"] else "")
            )
    print(
        f"apt lists in the layers: {left_before[0]} files, {human(left_before[1])} before; "
        f"{left_after[0]} files, {human(left_after[1])} after the dead-data run"
    )
    if args.json:
        figures = {
            "bytes_before": before,
            "runs": [
                {"label": r["label"], "seconds": r["seconds"], "bytes_after": pull_bytes(r["report"])}
                for r in runs
            ],
            "dead_data": dead_data_figures(real["report"]),
            "apt_lists_before": left_before,
            "apt_lists_after": left_after,
        }
        args.json.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return 0 if left_after[0] == 0 and left_before[0] > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

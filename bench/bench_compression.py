"""Output compression benchmark (issue 8): codec speed and size, parallel blocks, and a full run per codec.

On ``bench/out/bench-image.tar`` (build it with ``bench/build_bench_image.py``):

1. the codecs alone, on the raw tar stream of the image's largest layer (``--megabytes`` of it), fed in
   16 KiB writes as tarfile does: the writer's gzip (``GZIP_BLOCK`` blocks deflated on 1 or 2 threads), the
   previous single-stream zlib at the same level (the floor the blocks are compared with), zstd on 1 or 2
   threads, none. For each: wall time, MB/s of raw input, compressed size, and whether 1 and 2 workers gave
   the same bytes (they must);
2. a full default run (every pass): as it is (``keep``: each layer written again in its own codec), with
   ``--compression gzip`` and with ``--compression zstd``, as subprocesses alternating in one session (the
   ratio is what to compare: a loaded machine slows every run): wall time, CPU time and the bytes to pull
   (sum of compressed layers) after.

Target (issue 8): the zstd run takes less wall time than the gzip run.

Usage: python bench/bench_compression.py [--image PATH] [--megabytes N] [--skip-runs] [--repeat N] [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_IMAGE, ROOT, human, image_layers, measure, open_member, raw_stream

sys.path.insert(0, str(ROOT))

from optimizer.codec import CompressionSpec, Compressor

WRITE = 16 * 1024  # tarfile's copy buffer: the size of the writes the layer writer receives


def raw_sample(image: Path, megabytes: int) -> bytes:
    layers = image_layers(image)
    largest = max(layers, key=lambda layer: layer.size)
    out = bytearray()
    with open_member(image, largest.member) as reader:
        for chunk in raw_stream(reader, largest.codec):
            out += chunk
            if len(out) >= megabytes << 20:
                break
    return bytes(out[: megabytes << 20])


def codec_run(data: bytes, spec: CompressionSpec, workers: int) -> tuple[float, int, str]:
    sink = io.BytesIO()
    started = time.monotonic()
    compressor = Compressor(sink, spec, workers)
    view = memoryview(data)
    for start in range(0, len(data), WRITE):
        compressor.write(view[start : start + WRITE])
    compressor.finish()
    seconds = time.monotonic() - started
    blob = sink.getvalue()
    return seconds, len(blob), hashlib.sha256(blob).hexdigest()


def single_stream_gzip(data: bytes, level: int) -> tuple[float, int]:
    started = time.monotonic()
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 9)
    size = 0
    view = memoryview(data)
    for start in range(0, len(data), WRITE):
        size += len(compressor.compress(view[start : start + WRITE]))
    size += len(compressor.flush()) + 18
    zlib.crc32(data)
    return time.monotonic() - started, size


def bench_codecs(data: bytes) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    megabytes = len(data) / 1e6
    seconds, size = single_stream_gzip(data, 6)
    rows.append({"codec": "gzip:6 single stream (floor)", "workers": 1, "seconds": seconds, "size": size})
    for text in ("gzip:6", "zstd:3", "none"):
        spec = CompressionSpec.parse(text)
        digests = {}
        for workers in (1, 2):
            seconds, size, digest = codec_run(data, spec, workers)
            digests[workers] = digest
            rows.append({"codec": text, "workers": workers, "seconds": seconds, "size": size})
        rows[-1]["identical_1_2"] = digests[1] == digests[2]
        rows[-2]["identical_1_2"] = digests[1] == digests[2]
    print(f"codecs on {human(len(data))} of raw tar (the largest layer), {WRITE // 1024} KiB writes:")
    print(f"  {'codec':<32}{'workers':>8}{'seconds':>9}{'MB/s':>8}{'size':>12}  same bytes 1/2 workers")
    for row in rows:
        same = {True: "yes", False: "NO", None: "-"}[row.get("identical_1_2")]
        print(
            f"  {row['codec']:<32}{row['workers']:>8}{row['seconds']:>9.2f}{megabytes / row['seconds']:>8.0f}"
            f"{human(row['size']):>12}  {same}"
        )
    return rows


def full_runs(image: Path, workdir: Path, repeat: int) -> dict[str, dict[str, Any]]:
    """The runs alternate between the codecs, ``repeat`` times; each codec keeps its fastest run."""
    results: dict[str, dict[str, Any]] = {}
    optimize = str(ROOT / ".venv" / "bin" / "optimize")
    before = sum(layer.size for layer in image_layers(image))
    for codec in ("keep", "gzip", "zstd") * repeat:
        out = workdir / f"out-{codec}.tar"
        report_path = workdir / f"report-{codec}.json"
        command = [optimize, str(image), str(out), "--report", str(report_path), "-q"]
        if codec != "keep":  # keep: the default, each layer written again in its own codec
            command += ["--compression", codec]
        measured = measure([*command, "--workdir", str(workdir)])
        if measured.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed: {measured.stderr}")
        report = json.loads(report_path.read_text())
        after = sum(layer["size_after"] for layer in report["images"][0]["layers"])
        rewritten = sum(1 for layer in report["images"][0]["layers"] if layer["status"] == "rewritten")
        if codec in results and results[codec]["seconds"] <= measured.seconds:
            out.unlink()
            continue
        results[codec] = {
            "seconds": measured.seconds,
            "cpu_seconds": measured.cpu_seconds,
            "bytes_before": before,
            "bytes_after": after,
            "rewritten_layers": rewritten,
            "pass_seconds": {p["name"]: p["seconds"] for p in report["images"][0]["passes"]},
        }
        out.unlink()
    print(f"full default run (every pass) on {image.name}, {os.cpu_count()} cores, best of {repeat}:")
    print(f"  {'codec':<8}{'wall s':>9}{'cpu s':>9}{'pull before':>14}{'pull after':>14}{'rewritten':>11}")
    for codec, row in results.items():
        print(
            f"  {codec:<8}{row['seconds']:>9.1f}{row['cpu_seconds']:>9.1f}{human(row['bytes_before']):>14}"
            f"{human(row['bytes_after']):>14}{row['rewritten_layers']:>11}"
        )
    ratio = results["zstd"]["seconds"] / results["gzip"]["seconds"]
    cpu_ratio = results["zstd"]["cpu_seconds"] / results["gzip"]["cpu_seconds"]
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"  zstd / gzip in this session: wall {ratio:.2f}x, CPU {cpu_ratio:.2f}x; load average {load}")
    print(f"  target: zstd run faster than gzip run: {'met' if ratio < 1 else 'MISSED'}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, default=BENCH_IMAGE)
    parser.add_argument("--megabytes", type=int, default=96, help="raw bytes of the codec sample (MiB)")
    parser.add_argument("--skip-runs", action="store_true", help="only the codec measurements")
    parser.add_argument("--repeat", type=int, default=2, help="full runs per codec, alternating (best kept)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    if not args.image.exists():
        print(f"{args.image} not found: run bench/build_bench_image.py first", file=sys.stderr)
        return 2
    figures: dict[str, Any] = {"codecs": bench_codecs(raw_sample(args.image, args.megabytes))}
    status = 0
    if not all(row.get("identical_1_2", True) for row in figures["codecs"]):
        status = 1
    if not args.skip_runs:
        with tempfile.TemporaryDirectory(prefix="bench-compression-", dir=args.image.parent) as workdir:
            figures["runs"] = full_runs(args.image, Path(workdir), args.repeat)
        if figures["runs"]["zstd"]["seconds"] >= figures["runs"]["gzip"]["seconds"]:
            status = 1
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return status


if __name__ == "__main__":
    raise SystemExit(main())

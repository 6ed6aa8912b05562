"""Fleet benchmark (issue 11): the bytes a node pulls for the fleet before and after an ``optimize`` run.

The fleet is the four images of ``tests/realimages.py`` on one shared Debian base layer (built on first use,
about two minutes, then cached by recipe). Each image is optimized on its own, as a registry webhook or a CI
job would, once with the given options and once with ``--compression zstd`` added.

From the manifests only (never from the optimizer's report), it counts what a node downloads when it pulls:

- cold node: every distinct blob of the images it pulls (manifests, configs, layers), each once;
- warm node: the same less the blobs of the base image, which the node already has (it pulled
  ``debian:bookworm`` or another image of the fleet before).

Per image and for the whole fleet (blobs shared between images counted once). A default that rewrites the
shared base layer per image makes the warm figure grow: the target is that it never does (exit status 1 when
the fleet's warm-node bytes grow, for either codec).

Usage: sudo .venv/bin/python bench/bench_fleet.py [--json FILE] [-- OPTIMIZE-OPTIONS...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, human, measure

sys.path.insert(0, str(ROOT))

from tests.realimages import Blob, Fleet, FleetUnavailable, pulled_blobs, real_fleet

OPTIMIZE = ROOT / ".venv" / "bin" / "optimize"


@dataclass(frozen=True)
class Pull:
    """Bytes a node downloads: every blob once (cold), and without the base image's blobs (warm)."""

    cold: int
    warm: int


def pull(images: Iterable[Sequence[Blob]], cached: Iterable[Blob]) -> Pull:
    """What pulling all of ``images`` costs a node, each distinct digest once; ``cached`` is already there."""
    distinct: dict[str, int] = {}
    for blobs in images:
        for blob in blobs:
            distinct[blob.digest] = blob.size
    have = {blob.digest for blob in cached}
    return Pull(sum(distinct.values()), sum(size for digest, size in distinct.items() if digest not in have))


@dataclass(frozen=True)
class Variant:
    """One state of the fleet: the blobs each image's archive makes a node pull."""

    label: str
    blobs: Mapping[str, tuple[Blob, ...]]
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def distinct_base_layers(self) -> int:
        return len({bottom_layer(blobs).digest for blobs in self.blobs.values()})


def bottom_layer(blobs: Sequence[Blob]) -> Blob:
    return next(blob for blob in blobs if blob.kind == "layer")


def optimized(fleet: Fleet, label: str, options: Sequence[str], out: Path) -> Variant:
    blobs: dict[str, tuple[Blob, ...]] = {}
    seconds = cpu = 0.0
    for image in fleet.images:
        target = out / f"{image.name}-{label}.tar"
        run = measure([str(OPTIMIZE), str(image.path), str(target), "-q", *options])
        if run.returncode != 0:
            raise SystemExit(
                f"optimize {image.name} {' '.join(options)} failed ({run.returncode}): {run.stderr}"
            )
        seconds += run.seconds
        cpu += run.cpu_seconds
        blobs[image.name] = pulled_blobs(target)
    return Variant(label, blobs, seconds, cpu)


def table(fleet: Fleet, variants: Sequence[Variant]) -> tuple[list[str], dict[str, Any]]:
    base = pulled_blobs(fleet.base.path)
    names = [image.name for image in fleet.images]
    rows: dict[str, dict[str, Pull]] = {}
    for name in [*names, "fleet"]:
        chosen = names if name == "fleet" else [name]
        rows[name] = {v.label: pull([v.blobs[n] for n in chosen], base) for v in variants}
    first = variants[0].label
    header = f"{'image':<12}" + "".join(f"{v.label + ' cold':>22}{v.label + ' warm':>22}" for v in variants)
    lines = [header]
    for name, figures in rows.items():
        cells = []
        for v in variants:
            for which in ("cold", "warm"):
                value = getattr(figures[v.label], which)
                reference = getattr(figures[first], which)
                change = (
                    f" ({(value - reference) / reference:+.0%})" if v.label != first and reference else ""
                )
                cells.append(f"{human(value) + change:>22}")
        lines.append(f"{name:<12}" + "".join(cells))
    lines.append(
        "distinct base layers: "
        + ", ".join(f"{v.label} {v.distinct_base_layers()}" for v in variants)
        + f" (base image layer {human(bottom_layer(base).size)})"
    )
    document = {
        "images": {name: {label: vars(p) for label, p in figures.items()} for name, figures in rows.items()},
        "distinct_base_layers": {v.label: v.distinct_base_layers() for v in variants},
        "optimize_seconds": {v.label: round(v.seconds, 1) for v in variants if v.seconds},
        "optimize_cpu_seconds": {v.label: round(v.cpu_seconds, 1) for v in variants if v.cpu_seconds},
    }
    return lines, document


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "options", nargs="*", help="optimize options (after --); default: none (the default run)"
    )
    args = parser.parse_args(argv)
    try:
        fleet = real_fleet()
    except FleetUnavailable as error:
        print(f"bench_fleet: {error}", file=sys.stderr)
        return 2
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    options = list(args.options)
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as scratch:
        out = Path(scratch)
        before = Variant("before", {image.name: pulled_blobs(image.path) for image in fleet.images})
        gzip_run = optimized(fleet, "gzip", options, out)
        zstd_run = optimized(fleet, "zstd", [*options, "--compression", "zstd"], out)
    variants = (before, gzip_run, zstd_run)
    print(f"optimize {' '.join(options) or '(default options)'} on each image; pull bytes per node:")
    lines, document = table(fleet, variants)
    print("\n".join(lines))
    for run in (gzip_run, zstd_run):
        print(
            f"{run.label}: optimize took {run.seconds:.1f} s wall, {run.cpu_seconds:.1f} s CPU for 4 images"
        )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    document["options"] = options
    document["load_average_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    fleet_rows = document["images"]["fleet"]
    worse = [label for label in ("gzip", "zstd") if fleet_rows[label]["warm"] > fleet_rows["before"]["warm"]]
    if worse:
        print(f"TARGET MISSED: the fleet's warm-node pull grows with {', '.join(worse)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

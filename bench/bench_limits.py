"""Cost of the checks on hostile input (issue 12) on the bench image: limits, diff_id hashing, media sniffing.

Compares this tree with a baseline revision (default: the merge base with ``main``), extracted with ``git
archive`` into a temporary directory, on ``bench/out/bench-image.tar`` (``bench/build_bench_image.py``):

- ``index``: every layer decoded once by ``index_layer`` in a child process (the read path alone: before,
  libarchive decompressed; now our zlib/zstd feed libarchive the plain tar, hashed for the diff_id, capped);
- ``read``: ``optimize --passes dead-data`` (every layer read and checked, none rewritten);
- ``normalize``: ``optimize --normalize --passes none`` (every layer read and written again);
- ``repack``: ``optimize --passes none`` (no layer read; carried layers' first bytes are sniffed).

Runs alternate (before, after, before, after...) ``--repeat`` times; each figure is the median. The ratios
after/before of wall and CPU time are the cost. On a shared machine prefer the CPU ratio, and repeat.

Usage: python bench/bench_limits.py [--repeat N] [--baseline REV] [--modes index,read,normalize,repack]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_IMAGE, ROOT, Measured, measure

PYTHON = ROOT / ".venv" / "bin" / "python"

# Indexes every layer of the image's first manifest with whichever ``optimizer`` is first on sys.path.
INDEX_SCRIPT = """
import os, sys, tempfile, time
from optimizer.layer import index_layer
from optimizer.source import open_source
from optimizer.tree import read_tree
work = tempfile.mkdtemp(dir=sys.argv[2])
source = open_source(sys.argv[1], work)
(root,) = read_tree(source.blobs, source.root_manifests)
while root.children:
    root = root.children[0]
for number, layer in enumerate(root.layers):
    spool = os.path.join(work, f"layer-{number}.pack")
    index_layer(source.blobs, layer, spool, f"layer {number + 1}")
    os.unlink(spool)
"""

MODES = {
    "index": None,
    "read": ["--passes", "dead-data"],
    "normalize": ["--normalize", "--passes", "none"],
    "repack": ["--passes", "none"],
}


def baseline_tree(revision: str, into: Path) -> Path:
    """The ``optimizer`` and ``passes`` packages of ``revision``, extracted under ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "optimizer", "passes"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run(mode: str, tree: Path, image: Path, scratch: Path) -> Measured:
    # `python -m` and `python -c` put the working directory first on sys.path: run in ``tree``.
    env = dict(os.environ, PYTHONPATH=str(tree))
    extra = MODES[mode]
    if extra is None:
        command = [str(PYTHON), "-c", INDEX_SCRIPT, str(image), str(scratch)]
    else:
        out = scratch / "out.tar"
        command = [
            str(PYTHON),
            "-m",
            "optimizer",
            str(image),
            str(out),
            "-q",
            "--workdir",
            str(scratch),
            *extra,
        ]
    measured = measure(command, env, cwd=tree)
    if measured.returncode != 0:
        raise SystemExit(f"{mode} in {tree} failed ({measured.returncode}):\n{measured.stderr}")
    (scratch / "out.tar").unlink(missing_ok=True)
    return measured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--baseline", default="", help="revision to compare with (default: merge base with main)"
    )
    parser.add_argument("--modes", default="index,read,normalize,repack")
    parser.add_argument("--image", type=Path, default=BENCH_IMAGE)
    args = parser.parse_args()
    if not args.image.exists():
        raise SystemExit(f"{args.image} not found: build it with bench/build_bench_image.py")
    revision = (
        args.baseline
        or subprocess.run(
            ["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], check=True, capture_output=True, text=True
        ).stdout.strip()
    )
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    load = os.getloadavg()
    print(f"image: {args.image} ({args.image.stat().st_size / 2**20:.0f} MiB), baseline: {revision[:12]}")
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="bench-limits-") as temporary:
        base = baseline_tree(revision, Path(temporary) / "baseline")
        trees = {"before": base, "after": ROOT}
        results: dict[tuple[str, str], list[Measured]] = {}
        for mode in modes:
            for _ in range(args.repeat):
                for label, tree in trees.items():
                    scratch = Path(tempfile.mkdtemp(dir=temporary))
                    results.setdefault((mode, label), []).append(run(mode, tree, args.image, scratch))
    print(
        f"{'mode':<11}{'wall before':>12}{'wall after':>12}{'ratio':>8}{'cpu before':>12}{'cpu after':>12}{'ratio':>8}"
    )
    for mode in modes:
        before, after = results[(mode, "before")], results[(mode, "after")]
        wall = [statistics.median(m.seconds for m in runs) for runs in (before, after)]
        cpu = [statistics.median(m.cpu_seconds for m in runs) for runs in (before, after)]
        print(
            f"{mode:<11}{wall[0]:>11.2f}s{wall[1]:>11.2f}s{wall[1] / wall[0]:>8.3f}"
            f"{cpu[0]:>11.2f}s{cpu[1]:>11.2f}s{cpu[1] / cpu[0]:>8.3f}"
        )
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

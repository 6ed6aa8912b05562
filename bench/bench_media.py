"""Benchmark of the ``media`` pass against optipng, jpegtran and jpegoptim, on the fixture media and real files.

    .venv/bin/python bench/bench_media.py [--root DIR ...] [--limit N] [--workers 2] [--png-level L] [--no-big]
                                          [--reduce web|always|never] [--forms [--rounds N]]
    .venv/bin/python bench/bench_media.py --cost [bench/media_cost.py's options]
    .venv/bin/python bench/bench_media.py --lossy [bench/media_lossy.py's options]

Corpora (every PNG, JPEG, GIF and WebP found by its first bytes, one copy per distinct content):

* ``fixtures``: ``../shared/fixtures/media`` (PngSuite, Pillow's test images: hostile ones included);
* ``machine``: real assets installed on this machine (default roots: icon themes and docs under /usr/share,
  Python, pip and Rust packages' images), standing in for a web app's assets;
* ``bench image``: the media files in ``bench/out/bench-image.tar`` (if built), through the CLI.

For each corpus: bytes after the pass (default options, lossless) side by side with ``optipng -o2`` (and
``optipng -o2 -nx``, without reductions, like the native form the pass keeps by default) and
``jpegtran -optimize -copy all`` (and ``jpegoptim``, ``jpegtran -progressive``) on the same files, a file
counting as its original size where a tool fails or grows it; the files where ours is larger than a tool.
Then the pass's wall time on 1 and ``--workers`` processes (throughput), the per-file times (median, p95, max)
and the peak RSS of the process tree, and the memory and time bound on a synthetic image at the pixel cap and
one over it.

Targets (issue 4): at least as small as both optipng -o2 and jpegtran in total; per-file time and memory
bounded by the pixel cap.

``--forms`` (issue 11.3) measures what keeping the native form costs instead: on each corpus, the pass with
``--media-reduce never`` (what every file outside a web root gets) and ``always`` (what files under a web root
get, and what every file got before 11.3): bytes saved by each and how many files a reduction would change (bit
depth, colour type, channels, palette order); time on one core with every file run under both settings back
to back (``--rounds`` times), and their ratio, with the load average.

``--cost`` (issue 15) runs ``bench/media_cost.py``: the pass's share of a default run and its savings with the
cost model's defaults against the pass before it, on the bench image and a web-asset image, its time per file
against the file count, and the cost model's figures fitted again.

``--lossy`` runs ``bench/media_lossy.py``: ``--media-lossy`` against the lossless codec on the JPEGs of the
fixtures, of the machine and of high-quality JPEGs made from the fixtures.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.bench_strip_elf import TreeMemory
from bench.common import BENCH_IMAGE, ROOT, image_layers, measure, open_member, raw_stream
from optimizer.changes import Changes
from optimizer.filesystem import build_filesystem
from optimizer.layer import IndexedEntry
from optimizer.model import Entry, EntryKind
from optimizer.pipeline import ImageInfo, PassContext, WorkerPool
from optimizer.report import PassReport
from optimizer.spool import Spool
from passes.media import Media, MediaOptions, optimize, sniff

FIXTURES = Path(os.environ.get("OCI_OPTIMIZER_FIXTURES") or ROOT.parent / "shared" / "fixtures") / "media"
DEFAULT_ROOTS = [
    "/usr/share/icons",
    "/usr/share/pixmaps",
    "/usr/share/doc",
    "/usr/lib/python3",
    "/usr/lib/google-cloud-sdk",
    str(ROOT / ".venv" / "lib"),
    "/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/share/doc",
]
MB = 1024 * 1024


@dataclass(frozen=True)
class Item:
    path: str
    data: bytes
    kind: str


def collect(roots: list[str], limit: int) -> list[Item]:
    """Every image file under the roots, one per distinct content, in path order (PNGs sampled if limited)."""
    seen: set[str] = set()
    found: list[Item] = []
    for root in roots:
        for directory, dirs, names in os.walk(root):
            dirs.sort()
            for name in sorted(names):
                path = os.path.join(directory, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                try:
                    with open(path, "rb") as handle:
                        kind = sniff(handle.read(16))
                        if kind is None:
                            continue
                        handle.seek(0)
                        data = handle.read()
                except OSError:
                    continue
                digest = hashlib.sha256(data).hexdigest()
                if digest not in seen:
                    seen.add(digest)
                    found.append(Item(path, data, kind))
    if len(found) > limit:  # every JPEG, GIF and WebP (they are few), a spread sample of the PNGs
        others = [i for i in found if i.kind != "png"]
        pngs = [i for i in found if i.kind == "png"]
        room = max(0, limit - len(others))
        step = len(pngs) / max(room, 1)
        chosen = {id(pngs[int(n * step)]) for n in range(min(room, len(pngs)))}
        found = [i for i in found if i.kind != "png" or id(i) in chosen]
    return found


def run_pass(
    items: list[Item], workers: int, options: MediaOptions, workdir: str
) -> tuple[float, dict[str, int], dict[str, str], Counter[str], TreeMemory]:
    """The pass over a FileSystem holding the corpus: wall time, bytes after and digest per file, outcomes,
    memory."""
    spool = Spool(os.path.join(workdir, f"layer{workers}.pack"))
    entries = []
    for number, item in enumerate(items):
        content = spool.store(item.data)
        entries.append(IndexedEntry(Entry(f"f{number:06d}", EntryKind.FILE, size=content.size), content))
    fs = build_filesystem([entries])
    ctx = PassContext(
        fs,
        Changes(fs, Media.name, Spool(os.path.join(workdir, f"new{workers}.pack"))),
        ImageInfo("bench", "sha256:" + "0" * 64, None, {}, ["sha256:" + "1" * 64]),
        PassReport(Media.name),
        WorkerPool(workers),
    )
    with TreeMemory() as memory:
        started = time.monotonic()
        Media(options).run(ctx)
        seconds = time.monotonic() - started
        ctx.pool.close()
    after = {c.visible_path: c.bytes_after for c in ctx.changes}
    sizes = {item.path: after.get(f"f{n:06d}", len(item.data)) for n, item in enumerate(items)}
    outcomes: Counter[str] = Counter()
    for finding in ctx.report.findings:
        reason = finding.reason.split(":")[0] if finding.action == "kept" else ""
        outcomes[f"{finding.action} {reason}".strip()[:70]] += 1
        if str(finding.details.get("form", "")).startswith("reduced"):
            outcomes["form reduced"] += 1
    digests = {c.visible_path: c.content.sha256 for c in ctx.changes if c.content is not None}
    flagged = {f"f{n:06d}": item.path for n, item in enumerate(items)}
    CORRUPT.update(flagged[w.split(": ")[1]] for w in ctx.report.warnings if w.split(": ")[1] in flagged)
    return seconds, sizes, digests, outcomes, memory


def tool_size(command: Callable[[str, str], list[str]], item: Item, workdir: str, tag: str) -> int:
    """Bytes after a reference tool (the original size when it fails or does not shrink the file)."""
    source = os.path.join(workdir, f"{tag}.in")
    out = os.path.join(workdir, f"{tag}.out")
    with open(source, "wb") as handle:
        handle.write(item.data)
    argv = command(source, out)
    done = subprocess.run(argv, capture_output=True, check=False, timeout=300)
    target = source if argv[0].endswith("jpegoptim") else out
    size = os.path.getsize(target) if done.returncode == 0 and os.path.exists(target) else len(item.data)
    for path in (source, out):
        if os.path.exists(path):
            os.unlink(path)
    return min(size, len(item.data))


TOOLS: dict[str, tuple[str, Callable[[str, str], list[str]]]] = {
    "optipng -o2": ("png", lambda i, o: ["optipng", "-quiet", "-o2", "-out", o, i]),
    # without reductions: what to compare the native form with (the default outside web roots)
    "optipng -o2 -nx": ("png", lambda i, o: ["optipng", "-quiet", "-o2", "-nx", "-out", o, i]),
    "jpegtran -optimize -copy all": (
        "jpeg",
        lambda i, o: ["jpegtran", "-optimize", "-copy", "all", "-outfile", o, i],
    ),
    "jpegtran -optimize -progressive -copy all": (
        "jpeg",
        lambda i, o: ["jpegtran", "-optimize", "-progressive", "-copy", "all", "-outfile", o, i],
    ),
    "jpegoptim": ("jpeg", lambda i, o: ["jpegoptim", "-q", "--all-normal", i]),
}


CORRUPT: set[str] = set()  # files the pass left alone with a warning (truncated, corrupt, bombs)


def compare(name: str, items: list[Item], sizes: dict[str, int], workdir: str) -> None:
    print(f"\n== {name}: {len(items)} files, {sum(len(i.data) for i in items) / MB:.2f} MiB "
          f"({dict(Counter(i.kind for i in items))})")  # fmt: skip
    for kind in ("png", "jpeg", "gif", "webp"):
        chosen = [i for i in items if i.kind == kind]
        if not chosen:
            continue
        before = sum(len(i.data) for i in chosen)
        ours = sum(sizes[i.path] for i in chosen)
        print(f"  {kind:5} {len(chosen):5} files  original {before:>11,} B   ours {ours:>11,} B "
              f"(saved {100 * (before - ours) / before:5.2f}%)")  # fmt: skip
        for tool, (tool_kind, command) in TOOLS.items():
            if tool_kind != kind:
                continue
            if shutil.which(command("i", "o")[0]) is None:
                print(f"        {tool}: not installed")
                continue
            with ThreadPoolExecutor(2) as pool:
                theirs = list(
                    pool.map(lambda a, c=command: tool_size(c, a[1], workdir, f"t{a[0]}"), enumerate(chosen))
                )
            total = sum(theirs)
            larger = [(i, t) for i, t in zip(chosen, theirs, strict=True) if sizes[i.path] > t]
            verdict = "ours <= theirs" if ours <= total else "OURS LARGER"
            sound = [(i, t) for i, t in zip(chosen, theirs, strict=True) if i.path not in CORRUPT]
            if len(sound) < len(chosen):  # a tool may "optimize" a truncated file by dropping what is missing
                mine, its = sum(sizes[i.path] for i, _ in sound), sum(t for _, t in sound)
                verdict += (f" (without the {len(chosen) - len(sound)} corrupt files we leave alone: ours {mine:,} B, "
                            f"theirs {its:,} B: {'ours <= theirs' if mine <= its else 'OURS LARGER'})")  # fmt: skip
            print(f"        {tool:42} {total:>11,} B (saved {100 * (before - total) / before:5.2f}%)  {verdict}; "
                  f"files where ours is larger: {len(larger)} ({sum(sizes[i.path] - t for i, t in larger):,} B)")  # fmt: skip
            for item, size in larger[:5]:
                print(
                    f"            {item.path}: ours {sizes[item.path]}, {tool.split()[0]} {size}, original {len(item.data)}"
                )


def timings(items: list[Item], options: MediaOptions, sample: int = 300) -> None:
    """Per-file time of ``optimize`` in this process (one core), on a spread sample and the 10 largest files."""
    largest = sorted(items, key=lambda i: len(i.data))[-10:]
    spread = items[:: max(1, len(items) // sample)]
    items = list({i.path: i for i in [*spread, *largest]}.values())
    seconds = []
    for item in items:
        started = time.perf_counter()
        optimize(item.data, options)
        seconds.append(time.perf_counter() - started)
    order = sorted(range(len(items)), key=lambda n: seconds[n])
    values = np.array(seconds)
    slowest = order[-1]
    print(f"  per-file time (1 core, {len(items)} files): median {np.median(values) * 1000:.1f} ms, p95 {np.percentile(values, 95) * 1000:.1f} ms, "
          f"max {values.max():.2f} s ({items[slowest].path}, {len(items[slowest].data):,} B)")  # fmt: skip


def big_images(workdir: str, options: MediaOptions) -> None:
    """Memory and time at the pixel cap (a photo-like PNG just under it) and over it."""
    print(f"\n== bounds (--media-max-pixels {options.max_pixels:,})")
    side = int((options.max_pixels * 0.95) ** 0.5)
    for label, width in (("just under the cap", side), ("over the cap", side + side // 3)):
        path = os.path.join(workdir, f"big{width}.png")
        # Made in a child process: a big parent would inflate the measured child's ru_maxrss (Linux keeps the
        # pre-exec high-water mark).
        make = (
            "import sys, numpy as np; from PIL import Image; w = int(sys.argv[2]);"
            "r = np.arange(w, dtype=np.uint32); g = ((r[:, None] * 3 + r[None, :] * 5) % 256).astype(np.uint8);"
            "Image.fromarray(np.stack([g, g[::-1], g.T], axis=-1)).save(sys.argv[1], compress_level=1)"
        )
        subprocess.run([sys.executable, "-c", make, path, str(width)], check=True)
        script = (
            "import sys, time; sys.path.insert(0, sys.argv[2]);"
            "from passes.media import MediaOptions, optimize;"
            "data = open(sys.argv[1], 'rb').read(); t = time.monotonic();"
            f"r = optimize(data, MediaOptions(max_pixels={options.max_pixels}, png_level={options.png_level!r}));"
            "print(len(data), len(r.data) if r.data else None, round(time.monotonic() - t, 2), r.reason[:90])"
        )
        result = measure([sys.executable, "-c", script, path, str(ROOT)])
        print(f"  {label}: {width}x{width} = {width * width:,} px, {os.path.getsize(path):,} B -> {result.stdout.strip()}; "
              f"wall {result.seconds:.1f} s, peak RSS {result.max_rss / MB:.0f} MiB")  # fmt: skip
        os.unlink(path)


def bench_image_media(workdir: str) -> list[Item]:
    if not BENCH_IMAGE.exists():
        print(f"\n{BENCH_IMAGE} not found: build it with bench/build_bench_image.py")
        return []
    items: list[Item] = []
    seen: set[str] = set()
    for layer in image_layers(BENCH_IMAGE):
        layer_tar = os.path.join(workdir, "layer.tar")
        with open_member(BENCH_IMAGE, layer.member) as member, open(layer_tar, "wb") as handle:
            for chunk in raw_stream(member, layer.codec):
                handle.write(chunk)
        with tarfile.open(layer_tar) as tar:
            for entry in tar:
                reader = tar.extractfile(entry) if entry.isfile() and entry.size >= 16 else None
                if reader is None:
                    continue
                body = reader.read()
                kind = sniff(body[:16])
                digest = hashlib.sha256(body).hexdigest()
                if kind is not None and digest not in seen:
                    seen.add(digest)
                    items.append(Item(entry.name, body, kind))
    return items


def cli_run(workdir: str, workers: int) -> None:
    """``optimize bench-image.tar --passes media`` through the CLI, as a user runs it."""
    out = os.path.join(workdir, "out.tar")
    command = [str(ROOT / ".venv" / "bin" / "optimize"), str(BENCH_IMAGE), out, "--passes", "media",
               "--workers", str(workers), "-q"]  # fmt: skip
    result = measure(command)
    print(f"  CLI optimize --passes media on the bench image ({workers} workers): exit {result.returncode}, "
          f"wall {result.seconds:.1f} s, peak tree RSS {result.tree_rss / MB:.0f} MiB")  # fmt: skip
    if os.path.exists(out):
        os.unlink(out)


def forms(name: str, items: list[Item], options: MediaOptions, workdir: str, rounds: int) -> None:
    """Native form kept (``never``) against reductions allowed (``always``): bytes from one pass run of each,
    time from ``optimize`` on every file with both settings back to back (which goes first alternates), so that
    a drifting load weighs on both alike."""
    settings = {reduce: dataclasses.replace(options, reduce=reduce) for reduce in ("never", "always")}
    sizes: dict[str, dict[str, int]] = {}
    walls: dict[str, float] = {}
    reduced = 0
    load = os.getloadavg()
    for reduce, chosen in settings.items():
        scratch = tempfile.mkdtemp(dir=workdir)  # the spools of one run, removed after it
        walls[reduce], sizes[reduce], _, outcomes, _ = run_pass(items, 1, chosen, scratch)
        shutil.rmtree(scratch)
        reduced = outcomes["form reduced"] or reduced
    seconds = {reduce: 0.0 for reduce in settings}
    for _ in range(rounds):
        for number, item in enumerate(items):
            for reduce in ("never", "always") if number % 2 else ("always", "never"):
                started = time.perf_counter()
                optimize(item.data, settings[reduce])
                seconds[reduce] += time.perf_counter() - started
    end = os.getloadavg()
    print(f"\n== {name}: {len(items)} files, {sum(len(i.data) for i in items):,} B; native form kept (never) "
          f"vs reductions allowed (always); load {load[0]:.1f} at the start, {end[0]:.1f} at the end")  # fmt: skip
    for kind in ("png", "jpeg", "gif", "webp", "all"):
        chosen = [i for i in items if kind in (i.kind, "all")]
        before = sum(len(i.data) for i in chosen)
        if not before:
            continue
        after = {r: sum(sizes[r][i.path] for i in chosen) for r in settings}
        print(f"  {kind:5} {len(chosen):5} files  original {before:>12,} B   "
              + "   ".join(f"{r} {a:>12,} B (saved {100 * (before - a) / before:5.2f}%)" for r, a in after.items())
              + f"   native costs {after['never'] - after['always']:,} B")  # fmt: skip
    print(f"  files whose form a reduction changes: {reduced}")
    print(f"  time on 1 core, every file with both settings back to back, {rounds} round(s): never "
          f"{seconds['never']:.2f} s, always {seconds['always']:.2f} s, never/always "
          f"{seconds['never'] / seconds['always']:.3f} (one pass run each: {walls['never']:.2f} s, "
          f"{walls['always']:.2f} s)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--cost" in argv:  # issue 15: the pass's share of a default run, old against new (bench/media_cost.py)
        from bench.media_cost import main as cost_main

        return cost_main([a for a in argv if a != "--cost"])
    if "--lossy" in argv:
        from bench.media_lossy import main as lossy_main

        return lossy_main([a for a in argv if a != "--lossy"])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", action="append", help="directory to take images from (repeatable)")
    parser.add_argument("--limit", type=int, default=1500, help="files per corpus at most (a spread sample)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--png-level", type=lambda t: t if t == "auto" else int(t), default=MediaOptions.png_level
    )
    parser.add_argument("--cost", action="store_true", help="the cost figures of bench/media_cost.py instead")
    parser.add_argument("--no-big", action="store_true", help="skip the pixel-cap measurements")
    parser.add_argument("--only-big", action="store_true", help="only the pixel-cap measurements")
    parser.add_argument("--reduce", choices=("web", "always", "never"), default=MediaOptions.reduce)
    parser.add_argument("--forms", action="store_true", help="only native form vs reductions on each corpus")
    parser.add_argument("--rounds", type=int, default=1, help="timing rounds of --forms")
    args = parser.parse_args(argv)
    options = MediaOptions(png_level=args.png_level, reduce=args.reduce)
    with tempfile.TemporaryDirectory(prefix="bench-media-") as workdir:
        if args.only_big:
            big_images(workdir, options)
            return 0
        corpora = [
            ("fixtures", collect([str(FIXTURES)], args.limit)),
            ("machine", collect([r for r in (args.root or DEFAULT_ROOTS) if os.path.isdir(r)], args.limit)),
            ("bench image", bench_image_media(workdir)),
        ]
        for name, items in corpora:
            if not items:
                continue
            if args.forms:
                forms(name, items, options, workdir, args.rounds)
                continue
            one, sizes, digests, outcomes, memory = run_pass(items, 1, options, workdir)
            many, _, digests_many, _, memory_many = run_pass(items, args.workers, options, workdir)
            compare(name, items, sizes, workdir)
            total = sum(len(i.data) for i in items) / MB
            print(f"  outcomes: {dict(outcomes.most_common(8))}")
            print(f"  pass wall time: 1 worker {one:.2f} s ({total / one:.2f} MiB/s, {len(items) / one:.0f} files/s); "
                  f"{args.workers} workers {many:.2f} s ({total / many:.2f} MiB/s, {len(items) / many:.0f} files/s), "
                  f"speed-up {one / many:.2f}x")  # fmt: skip
            print(f"  peak RSS: 1 worker {memory.peak_total / MB:.0f} MiB; {args.workers} workers: whole tree "
                  f"{memory_many.peak_total / MB:.0f} MiB, largest process {memory_many.peak_process / MB:.0f} MiB")  # fmt: skip
            print(f"  identical output bytes with 1 and {args.workers} workers: {digests == digests_many}")
            timings(items, options)
        if BENCH_IMAGE.exists() and not args.forms:
            cli_run(workdir, args.workers)
        if not args.no_big and not args.forms:
            big_images(workdir, options)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

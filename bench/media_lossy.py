"""``--media-lossy`` against the lossless codec, on JPEGs: bytes saved, files the SSIM gate refuses, time.

    .venv/bin/python bench/media_lossy.py [--jpeg-quality 85] [--ssim-floor 0.98] [--rounds 3] [--root DIR ...]
    .venv/bin/python bench/bench_media.py --lossy ...   (the same)

Corpora: the JPEGs of the fixtures and of the machine (``bench_media``'s), and ``made``: every fixture that is
not a JPEG, of 64x64 pixels and more, first frame on white, saved by Pillow at quality 95 in 4:4:4, 4:2:2 and
4:2:0 (high-quality JPEGs, the kind a lossy re-encode is for, with every chroma subsampling Pillow writes).

Each file goes through the codec (``passes.media.optimize``) with ``--media-reduce always`` (a file given alone
has no web root to tell) with and without ``lossy``: bytes after each; the files re-encoded lossily, refused by
the SSIM gate (and of those, the ones whose luma was over the floor: refused for a chroma channel, which a
luma-only gate let through), left lossless for their chroma sampling or for a quality not above the target; the
codec's time on one core for each setting, ``--rounds`` times, alternated file by file, with the load average at
the start and the end (the machine has 2 cores and other jobs). The figures read the results' ``details``
(``ssim``, ``ssim_channels``, ``lossy``), and what an older codec did not record counts as nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image

from bench.bench_media import DEFAULT_ROOTS, FIXTURES, Item, collect
from passes.media import MediaOptions, MediaResult, optimize


def made_jpegs() -> list[Item]:
    """The fixtures that are not JPEGs (64x64 pixels and more), first frame on white, saved by Pillow at quality
    95 in 4:4:4, 4:2:2 and 4:2:0."""
    made = []
    for item in collect([str(FIXTURES)], 10_000):
        if item.kind == "jpeg":
            continue
        try:
            image = Image.open(io.BytesIO(item.data))
            image.load()
        except Exception:  # the corrupt and bomb fixtures, on purpose
            continue
        if min(image.size) < 64:
            continue
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", image.size, "white")
        flat.paste(rgba, mask=rgba.getchannel("A"))
        for subsampling, label in ((0, "444"), (1, "422"), (2, "420")):
            out = io.BytesIO()
            flat.save(out, "JPEG", quality=95, subsampling=subsampling)
            made.append(Item(f"{item.path}.{label}.jpg", out.getvalue(), "jpeg"))
    return made


def tally(result: MediaResult, options: MediaOptions) -> Counter[str]:
    """What the lossy codec did with one file, as counts."""
    floor, details = options.ssim_floor, result.details
    why = str(details.get("lossy", ""))
    channels = str(details.get("ssim_channels", "")).split()
    luma = float(channels[1]) if channels else float(details.get("ssim", 1.0))
    refused = "ssim" in details and float(details["ssim"]) < floor
    quality = details.get("estimated_quality", 0)
    known = not why and isinstance(quality, int) and "estimated_quality" in details  # an older codec's result
    low = "not above" in why or (known and int(quality) <= options.jpeg_quality and "ssim" not in details)
    return Counter(
        {
            "lossy": result.reason.startswith("re-encoded at quality"),
            "SSIM refused": refused,
            "SSIM refused, luma over the floor": refused and luma >= floor,
            "sampling left": "sampling" in why,
            "quality not above": low,
        }
    )


def lossy(name: str, items: list[Item], options: MediaOptions, rounds: int) -> None:
    """The figures of one corpus (see the module's docstring)."""
    jpegs = [i for i in items if i.kind == "jpeg"]
    if not jpegs:
        return
    settings = {
        "lossless": dataclasses.replace(options, lossy=False, reduce="always"),
        "lossy": dataclasses.replace(options, lossy=True, reduce="always"),
    }
    seconds = {setting: 0.0 for setting in settings}
    results: dict[tuple[str, str], MediaResult] = {}
    load = os.getloadavg()
    for _ in range(rounds):
        for number, item in enumerate(jpegs):
            for setting in ("lossy", "lossless") if number % 2 else ("lossless", "lossy"):
                started = time.perf_counter()
                results[item.path, setting] = optimize(item.data, settings[setting])
                seconds[setting] += time.perf_counter() - started
    end = os.getloadavg()
    before = sum(len(i.data) for i in jpegs)
    after = {s: sum(len(results[i.path, s].data or i.data) for i in jpegs) for s in settings}
    counts: Counter[str] = Counter()
    print(f"\n== {name}: {len(jpegs)} JPEGs, {before:,} B; --media-lossy --jpeg-quality {options.jpeg_quality} "
          f"--media-ssim-floor {options.ssim_floor}; load {load[0]:.2f} at the start, {end[0]:.2f} at the end")  # fmt: skip
    for item in jpegs:
        result = results[item.path, "lossy"]
        counts.update(tally(result, options))
        scores = result.details.get("ssim_channels") or result.details.get("ssim", "-")
        print(f"    {item.path[-40:]:40} q{result.details.get('estimated_quality', '?')!s:>3} {scores!s:32} "
              f"{len(item.data):>9,} -> {len(result.data or item.data):>9,} B  {result.reason[:48]}")  # fmt: skip
    for setting, total in after.items():
        print(f"  {setting:8} {total:>11,} B (saved {before - total:>10,} B, {100 * (before - total) / before:5.2f}%);"
              f" codec time on 1 core, {rounds} round(s): {seconds[setting]:.2f} s")  # fmt: skip
    print(f"  lossy beyond lossless: {after['lossless'] - after['lossy']:,} B; files: {dict(counts)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", action="append", help="directory to take the machine's images from")
    parser.add_argument("--jpeg-quality", type=int, default=MediaOptions.jpeg_quality)
    parser.add_argument("--ssim-floor", type=float, default=MediaOptions.ssim_floor)
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (alternated file by file)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    options = MediaOptions(jpeg_quality=args.jpeg_quality, ssim_floor=args.ssim_floor)
    roots = [r for r in (args.root or DEFAULT_ROOTS) if os.path.isdir(r)]
    for name, items in (("fixtures", collect([str(FIXTURES)], 10_000)), ("machine", collect(roots, 10_000)),
                        ("made", made_jpegs())):  # fmt: skip
        lossy(name, items, options, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

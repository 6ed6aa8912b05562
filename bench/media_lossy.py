"""``--media-lossy`` against the lossless codec, on JPEGs: bytes saved, files the SSIM gate refuses, time.

    .venv/bin/python bench/media_lossy.py [--jpeg-quality 85] [--ssim-floor 0.98] [--ssim-chroma-floor 0.95]
                                          [--rounds 3] [--root DIR ...]
    .venv/bin/python bench/bench_media.py --lossy ...   (the same)

Corpora: the JPEGs of the fixtures and of the machine (``bench_media``'s), and ``made``: every fixture that is
not a JPEG, of 64x64 pixels and more, first frame on white, saved by Pillow at quality 95 in 4:4:4, 4:2:2 and
4:2:0 (high-quality JPEGs, the kind a lossy re-encode is for, with every chroma subsampling Pillow writes).

Each file goes through the codec (``passes.media.optimize``) with ``--media-reduce always`` (a file given alone
has no web root to tell) with and without ``lossy``: bytes after each; the files re-encoded lossily (and of
those, the ones with a plane under the floor, which gating on the worst plane refused), refused by each rule of
the SSIM gate (the combined score under the floor, a chroma plane under the chroma floor), left lossless for
their chroma sampling or for a quality not above the target; the codec's time on one core for each setting,
``--rounds`` times, alternated file by file, with the load average at the start and the end (the machine has 2
cores and other jobs). The figures read the results' ``details`` (``ssim``, ``ssim_channels``, ``lossy``).

``scoring``: every candidate the gate scored, made again and scored three ways: as the gate does (float32, Cb
and Cr at the file's own chroma resolution), in float64 at that resolution, and in float64 with Cb and Cr at full
resolution (how 760bb85 scored): the largest difference of any plane's score from the gate's, the decisions
(``jpeg.ssim_refusals``) that differ, and each way's SSIM time.
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

import numpy as np
from PIL import Image, JpegImagePlugin

from bench.bench_media import DEFAULT_ROOTS, FIXTURES, Item, collect
from passes.media import MediaOptions, MediaResult, optimize
from passes.media.jpeg import ssim_refusals
from passes.media.verify import combined_ssim, jpeg_ssim


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
    details = result.details
    why = str(details.get("lossy", ""))
    words = str(details.get("ssim_channels", "")).split()
    worst = min((float(w) for w in words[1::2]), default=1.0)
    lossy = result.reason.startswith("re-encoded at quality")
    return Counter(
        {
            "lossy": lossy,
            "lossy, a plane under the floor": lossy and worst < options.ssim_floor,
            "refused: combined under the floor": "below the floor" in why,
            "refused: chroma under the chroma floor": "below the chroma floor" in why,
            "refused: chroma only": "below the chroma floor" in why and "below the floor" not in why,
            "sampling left": "sampling" in why,
            "quality not above": "not above" in why,
        }
    )


# how the planes are scored: chroma at the file's own resolution or at full resolution, and in which float
WAYS = {"gate": (True, np.float32), "float64": (True, np.float64), "float64, full": (False, np.float64)}


def scoring(jpegs: list[Item], results: dict[tuple[str, str], MediaResult], options: MediaOptions) -> None:
    """Every candidate the gate scored, scored the three ``WAYS`` (see the module's docstring)."""
    seconds = dict.fromkeys(WAYS, 0.0)
    differences: dict[str, list[float]] = {way: [] for way in WAYS}
    decisions: Counter[str] = Counter()
    scored = 0
    for item in jpegs:
        reported = results[item.path, "lossy"].details.get("ssim")
        if reported is None:
            continue
        scored += 1
        original = Image.open(io.BytesIO(item.data))
        original.load()
        sampling = JpegImagePlugin.get_sampling(original)
        out = io.BytesIO()  # as jpeg._jpeg_lossy makes it (MozJPEG and the metadata leave the pixels alone)
        original.save(out, "JPEG", quality=options.jpeg_quality, subsampling=sampling, optimize=True)
        candidate = Image.open(out)
        candidate.load()
        own = {1: (2, 1), 2: (2, 2)}.get(sampling, (1, 1))
        scores = {}
        for way, (at_own, dtype) in WAYS.items():
            started = time.perf_counter()
            scores[way] = jpeg_ssim(original, candidate, own if at_own else (1, 1), dtype)
            seconds[way] += time.perf_counter() - started
        gate = scores["gate"]
        refused = bool(ssim_refusals(gate, options.ssim_floor, options.ssim_chroma_floor))
        for way, planes in scores.items():
            differences[way].append(max(abs(planes[n] - gate[n]) for n in gate))
            decisions[way] += refused != bool(
                ssim_refusals(planes, options.ssim_floor, options.ssim_chroma_floor)
            )
        if abs(float(reported) - combined_ssim(gate)) > 1e-5:  # the codec's finding rounds to 5 decimals
            print(f"    ! {item.path}: the codec reported {reported}, scored again {gate}")
    for way in WAYS:
        print(f"  scoring, {way:14} on {scored} candidates: largest difference from the gate's "
              f"{max(differences[way], default=0.0):.2e}, decisions that differ {decisions[way]}, "
              f"SSIM time {seconds[way]:.2f} s")  # fmt: skip


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
          f"--media-ssim-floor {options.ssim_floor} --media-ssim-chroma-floor {options.ssim_chroma_floor}; "
          f"load {load[0]:.2f} at the start, {end[0]:.2f} at the end")  # fmt: skip
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
    scoring(jpegs, results, options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", action="append", help="directory to take the machine's images from")
    parser.add_argument("--jpeg-quality", type=int, default=MediaOptions.jpeg_quality)
    parser.add_argument("--ssim-floor", type=float, default=MediaOptions.ssim_floor)
    parser.add_argument("--ssim-chroma-floor", type=float, default=MediaOptions.ssim_chroma_floor)
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (alternated file by file)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    options = MediaOptions(
        jpeg_quality=args.jpeg_quality, ssim_floor=args.ssim_floor, ssim_chroma_floor=args.ssim_chroma_floor
    )
    roots = [r for r in (args.root or DEFAULT_ROOTS) if os.path.isdir(r)]
    for name, items in (("fixtures", collect([str(FIXTURES)], 10_000)), ("machine", collect(roots, 10_000)),
                        ("made", made_jpegs())):  # fmt: skip
        lossy(name, items, options, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

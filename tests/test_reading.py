"""Layers read side by side give what reading them in order gives: the same output, the same errors."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from optimizer import Options, optimize
from optimizer.errors import LayerError, LimitError
from optimizer.layer import LayerIndex
from optimizer.limits import Limits, Together
from optimizer.model import Descriptor
from optimizer.plan import number_ranges
from optimizer.progress import Step, Throttle
from optimizer.reading import LayerRead, read_side_by_side
from optimizer.source import BlobStore

from .imagetools import compressed, digest_of, oci_files, tar_of, write_tar
from .test_hostile import zero_file_layer

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def layer(name: str, size: int) -> tuple[str, bytes, str]:
    """A gzip layer of ``size`` bytes of data that does not compress away (so reading it takes a while)."""
    data = b"".join(hashlib.sha256(f"{name}{n}".encode()).digest() for n in range(size // 32))
    plain = tar_of([(f"{name}/", "dir", b""), (f"{name}/data", "file", data), (f"{name}/x.gz", "file", b"")])
    return GZIP, compressed(plain, "gzip"), digest_of(plain)


def corrupt(blob: tuple[str, bytes, str]) -> tuple[str, bytes, str]:
    """The same layer with its deflate data damaged a little way in (its digest is that of the bytes)."""
    media_type, data, diff_id = blob
    damaged = bytearray(data)
    damaged[len(damaged) // 2 : len(damaged) // 2 + 64] = bytes(64)
    return media_type, bytes(damaged), diff_id


def run(source: Path, out: Path | None, workers: int, **options: object) -> str:
    """The run's outcome: the output's sha256 (dry run: the report's layers), or the error's message."""
    steps: list[Step] = []
    try:
        report = optimize(
            str(source),
            str(out) if out else None,
            Options(workers=workers, dry_run=out is None, progress=steps.append, **options),  # type: ignore[arg-type]
        )
    except (LayerError, LimitError) as error:
        return f"error: {error}"
    if out is None:
        return json.dumps([vars(layer) for image in report.images for layer in image.layers], default=str)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def test_the_output_is_the_same_read_side_by_side_or_in_order(tmp_path: Path) -> None:
    layers = [layer(f"l{n}", 200_000 * (n + 1)) for n in range(5)]
    source = write_tar(tmp_path / "in.tar", oci_files(layers)[0])
    outcomes = {
        workers: (
            run(source, tmp_path / f"out-{workers}.tar", workers, normalize=True),
            run(source, None, workers),
        )
        for workers in (1, 2, 4)
    }
    assert outcomes[1] == outcomes[2] == outcomes[4]
    assert not outcomes[1][0].startswith("error")


def test_the_first_broken_layer_is_named_whichever_fails_first(tmp_path: Path) -> None:
    # layer 2 is large and breaks half way, layer 4 is small and breaks at once: side by side, layer 4 fails
    # first; the message names layer 2, as reading in order does.
    layers = [
        layer("a", 50_000),
        corrupt(layer("b", 3_000_000)),
        layer("c", 50_000),
        corrupt(layer("d", 2_000)),
    ]
    source = write_tar(tmp_path / "in.tar", oci_files(layers)[0])
    messages = {run(source, None, workers) for workers in (1, 2, 2, 2, 4)}
    assert len(messages) == 1, messages
    (message,) = messages
    assert message.startswith("error: ") and ", layer 2/4 sha256:" in message and "corrupt" in message


def test_the_image_byte_limit_names_the_layer_it_names_in_order(tmp_path: Path) -> None:
    layers = [zero_file_layer(600 << 10, "gzip", name) for name in "abcde"]
    source = write_tar(tmp_path / "in.tar", oci_files(layers)[0])
    limits = Limits(max_image_bytes=1 << 20)
    messages = {run(source, None, workers, limits=limits, normalize=True) for workers in (1, 2, 3)}
    assert len(messages) == 1, messages
    (message,) = messages
    assert ", layer 2/5 sha256:" in message and "--max-image-bytes 1M" in message


def test_a_failed_reading_returns_the_layers_read_and_removes_the_rest(tmp_path: Path) -> None:
    blobs = BlobStore("img")
    reads = []
    for number, (media_type, data, _) in enumerate([layer("a", 400_000), corrupt(layer("b", 40_000))]):
        path = tmp_path / f"blob-{number}"
        path.write_bytes(data)
        descriptor = Descriptor(media_type, digest_of(data), len(data))
        blobs.add_slice(descriptor.digest, str(path), 0, len(data))
        reads.append(
            LayerRead(
                number, descriptor, str(tmp_path / f"spool-{number}"), f"img, layer {number + 1}/2", False
            )
        )
    steps: list[Step] = []
    # one worker, the largest first: layer 1 is read whole before layer 2 fails (with two it may be stopped)
    found = read_side_by_side(blobs, reads, Limits(), 1, Throttle(steps.append, "read", "layers 1-2/2", 1))
    assert list(found) == [0]
    assert isinstance(found[0], LayerIndex) and [e.entry.path for e in found[0].entries][:2] == [
        "a",
        "a/data",
    ]
    assert os.path.exists(reads[0].spool) and not os.path.exists(reads[1].spool)


def test_layers_read_together_share_the_image_budget() -> None:
    together = Together(1000)
    together.take(600, "layer 1")
    with pytest.raises(LimitError, match=r"layer 2: the image's layers exceed 1000 bytes together"):
        together.take(600, "layer 2")
    with pytest.raises(LimitError, match="reading stopped"):
        together.take(1, "layer 3")
    stopped = Together(1000)
    stopped.stop()
    with pytest.raises(LimitError, match="layer 1: reading stopped"):
        stopped.take(1, "layer 1")


def test_one_progress_step_counts_every_layer_read_side_by_side(tmp_path: Path) -> None:
    layers = [layer(f"l{n}", 100_000) for n in range(3)]
    source = write_tar(tmp_path / "in.tar", oci_files(layers)[0])
    steps: list[Step] = []
    optimize(str(source), None, Options(workers=2, dry_run=True, normalize=True, progress=steps.append))
    reads = [step for step in steps if step.phase == "read"]
    assert {step.label for step in reads} == {"layers 1-3/3"}
    assert reads[-1].done == reads[-1].total == sum(len(blob) for _, blob, _ in layers)


@pytest.mark.parametrize(
    ("numbers", "text"), [([1, 2, 3], "1-3"), ([2, 3, 4, 6], "2-4,6"), ([5], "5"), ([1, 3, 5], "1,3,5")]
)
def test_number_ranges(numbers: list[int], text: str) -> None:
    assert number_ranges(numbers) == text

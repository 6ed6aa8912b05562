"""Resource limits: how much an input may make a run read, expand and hold, declared once.

An image is a few kilobytes of JSON that can name gigabytes: a 330 KB zstd layer expands to 10 GiB of zeros, a
manifest can list the same small blob 300,000 times. ``Limits`` bounds each such dimension; every bound is a
setting (``settings``), so the command-line flag (``--max-layer-bytes``) and the configuration key
(``max_layer_bytes``) are derived from the field. Exceeding one raises ``LimitError`` (exit 3) whose message
names the flag that raises it.

The bounds are enforced where the data flows, never after the fact: the uncompressed bytes of a layer as they
are decompressed (``tar_reader.LayerStream``), its entries as libarchive lists them (``layer.index_layer``),
layers and index entries as the tree is read (``tree``), a compressed input archive as it is expanded
(``source.archive``). Nothing here reads or writes anything.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field, fields

from .errors import LimitError, UsageError
from .settings import setting

__all__ = ["RATIO_FLOOR", "Cap", "Limits", "Together", "format_size", "parse_size"]

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# Below this many uncompressed bytes the expansion ratio is not checked: tar headers of small or empty files
# compress a hundredfold, and a layer that small costs nothing to read.
RATIO_FLOOR = 64 * MiB

_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``4096``, ``64k``, ``512M``, ``16GiB``, ``1T`` -> bytes (binary units)."""
    match = _SIZE.match(text)
    if match is None:
        raise UsageError(f"not a size: {text!r} (use a number of bytes, or 64K, 512M, 16G)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def format_size(value: int) -> str:
    """The inverse of ``parse_size`` for messages: the largest unit that divides ``value``, else bytes."""
    for suffix, unit in (("T", 1 << 40), ("G", GiB), ("M", MiB), ("K", KiB)):
        if value >= unit and value % unit == 0:
            return f"{value // unit}{suffix}"
    return str(value)


class Together:
    """What layers read side by side may give between them (``--max-image-bytes``), taken from as each one
    decompresses: every reader stops at its next block once the total is passed, or once ``stop`` is called
    (another reader failed). Which layer is then named is left to a reading in order (``plan``), so that the
    message is the one a sequential run gives."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._left = limit
        self._stopped = False
        self._lock = threading.Lock()

    def take(self, amount: int, where: str) -> None:
        with self._lock:
            self._left -= amount
            if self._stopped:
                raise LimitError(f"{where}: reading stopped (another layer of the image failed)")
            if self._left < 0:
                self._stopped = True
                raise LimitError(
                    f"{where}: the image's layers exceed {self.limit} bytes together "
                    f"(--max-image-bytes {format_size(self.limit)}); raise the limit if the image is trusted"
                )

    def stop(self) -> None:
        with self._lock:
            self._stopped = True


@dataclass(frozen=True)
class Cap:
    """The most uncompressed bytes one layer may give, and the limit that sets it (for the message); with
    ``together``, the layers read beside it share the image's budget too."""

    bytes: int
    reason: str  # "--max-layer-bytes 16G", "--max-expansion-ratio 200 of its 330 KiB"...
    together: Together | None = field(default=None, compare=False)

    def exceeded(self, where: str) -> LimitError:
        return LimitError(
            f"{where}: the uncompressed layer exceeds {self.bytes} bytes ({self.reason}); "
            f"raise the limit if the image is trusted"
        )

    def take(self, size: int, amount: int, where: str) -> None:
        """A reader has given ``size`` bytes so far, the last ``amount`` of them just now."""
        if size > self.bytes:
            raise self.exceeded(where)
        if self.together is not None:
            self.together.take(amount, where)


@dataclass(frozen=True)
class Limits:
    """What one run may be made to read and hold. The defaults leave room for the largest real images we know
    of (CUDA and ML images: layers of 5-10 GiB, a few dozen layers) and stop decompression bombs early."""

    max_layer_bytes: int = setting(
        16 * GiB,
        "most uncompressed bytes in one layer (default: 16G)",
        metavar="SIZE",
        parse=parse_size,
    )
    max_image_bytes: int = setting(
        32 * GiB,
        "most uncompressed bytes in the layers of one image (default: 32G)",
        metavar="SIZE",
        parse=parse_size,
    )
    max_expansion_ratio: int = setting(
        200,
        "most uncompressed bytes per compressed byte of a layer, checked past 64M (default: 200)",
        metavar="N",
    )
    max_layer_entries: int = setting(
        1_000_000, "most entries (files, directories, links) in one layer (default: 1000000)", metavar="N"
    )
    max_layers: int = setting(1000, "most layers in one image (default: 1000)", metavar="N")
    max_index_manifests: int = setting(
        10_000, "most manifests listed by one index (default: 10000)", metavar="N"
    )

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                flag = "--" + item.name.replace("_", "-")
                raise UsageError(f"{flag} must be a positive integer, not {value!r}")

    def layer_cap(self, compressed_size: int, image_left: int) -> Cap:
        """The tightest bound on one layer's uncompressed bytes: its own limit, the ratio to its compressed
        size (never below ``RATIO_FLOOR``), and what is left of the image's budget."""
        ratio = self.max_expansion_ratio * compressed_size
        caps = [
            Cap(self.max_layer_bytes, f"--max-layer-bytes {format_size(self.max_layer_bytes)}"),
            Cap(
                max(ratio, RATIO_FLOOR),
                f"--max-expansion-ratio {self.max_expansion_ratio} of its {compressed_size} compressed bytes",
            ),
            Cap(
                image_left,
                f"--max-image-bytes {format_size(self.max_image_bytes)} for the image's layers together",
            ),
        ]
        return min(caps, key=lambda cap: cap.bytes)

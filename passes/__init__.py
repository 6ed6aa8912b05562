"""The passes, in the one order they run. Order is meaning: a pass sees the changes of the passes before it.

Each pass is one class in its own module (see ``optimizer.pipeline`` for the interface); a pass with several
concerns is a package whose ``__init__`` holds the pass (``slim``, ``media``, ``upx``, ``inject``). Libraries the passes
share sit beside them: ``elf`` (the ELF stripper), ``decompression``, ``servers`` (which web servers send
precompressed files, and from where). Add a pass by writing its module and adding one line here; nothing
registers itself on import.
"""

from __future__ import annotations

from typing import Any

from optimizer.pipeline import Pass
from passes.compressed_duplicates import CompressedDuplicates
from passes.dead_data import DeadData
from passes.inject import Inject
from passes.media import Media
from passes.slim import Slim
from passes.strip_elf import StripElf
from passes.upx import Upx

PASSES: tuple[type[Pass[Any]], ...] = (
    DeadData,
    Slim,
    StripElf,
    Media,
    CompressedDuplicates,
    Upx,
    Inject,
)

__all__ = ["PASSES", "pass_names"]


def pass_names() -> list[str]:
    return [p.name for p in PASSES]

"""OCI image layout directories (``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``)."""

from __future__ import annotations

import os
from pathlib import Path

from ..documents import parse_object
from ..errors import FormatError
from .base import Source, check_index
from .blobs import BlobStore

__all__ = ["open_layout_dir"]


def open_layout_dir(root: Path, label: str) -> Source:
    index_path = root / "index.json"
    if not index_path.is_file():
        raise FormatError(f"{label}: not an OCI image layout (no index.json)")
    warnings = []
    layout = root / "oci-layout"
    if not layout.is_file():
        warnings.append(f"{label}: the oci-layout file is missing; reading it as an OCI layout anyway")
    index_bytes = index_path.read_bytes()
    index = parse_object(index_bytes, f"{label}: index.json")
    check_index(index, f"{label}: index.json")
    blobs = BlobStore(label)
    blob_root = root / "blobs"
    if blob_root.is_dir():
        for algorithm in sorted(os.listdir(blob_root)):
            directory = blob_root / algorithm
            if not directory.is_dir():
                continue
            for hexname in os.listdir(directory):
                file = directory / hexname
                if file.is_file():
                    blobs.add_slice(f"{algorithm}:{hexname}", str(file), 0, file.stat().st_size)
    return Source(label, "oci-dir", blobs, index, index_bytes, warnings=warnings)

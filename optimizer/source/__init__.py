"""Sources: where an image's blobs and its root index come from.

Every input form ends up as a ``Source``: a root OCI index (parsed, plus its exact bytes) and a store of
blobs (``Blobs``) that opens any blob by descriptor, verifying digest and size as it is read. One module per
form: ``layout`` (an OCI image layout directory), ``archive`` (a tar of one, an "OCI archive", or a
``docker save`` tarball, whole-file compressed or not), ``docker`` (the manifests synthesised for docker
archives) and ``registry`` (``docker://`` references: blobs fetched on demand, verified, cached on disk).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..limits import Limits
from .base import Source, check_index
from .blobs import Blobs, BlobStore, Origin

__all__ = ["BlobStore", "Blobs", "Origin", "Source", "check_index", "open_source"]


def open_source(path: str, workdir: str, name: str | None = None, limits: Limits | None = None) -> Source:
    """Open an OCI layout directory, OCI archive or docker archive at ``path`` (``limits``: the run's)."""
    from .archive import open_archive
    from .layout import open_layout_dir

    label = name or path
    p = Path(path)
    if p.is_dir():
        return open_layout_dir(p, label)
    if not p.exists():
        raise InputError(f"{label}: no such file or directory")
    return open_archive(p, workdir, label, limits or Limits())

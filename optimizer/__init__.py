"""oci-optimizer: write a smaller container image that still works.

The library API::

    from optimizer import Options, optimize
    report = optimize("in.tar", "out.tar", Options(skip=("media",)))
    print(report.bytes_before, report.bytes_after)

Lower level: ``open_source`` (read any input form), ``index_layer`` (decode a layer once),
``build_filesystem`` (the merged view), ``Changes`` (record edits), ``optimizer.output`` (deterministic writers).
"""

from .api import ANNOTATION_SOURCE_DIGEST, optimize, select_passes
from .changes import Change, ChangeRefused, Changes
from .errors import (
    DigestMismatchError,
    FormatError,
    InputError,
    LayerError,
    LimitError,
    MissingBlobError,
    OptimizerError,
    OutputError,
    PassFailedError,
    PolicyError,
    RegistryError,
    RequiredToolNotFound,
    UsageError,
)
from .filesystem import FileSystem, Node, build_filesystem
from .layer import IndexedEntry, LayerIndex, index_layer
from .limits import Limits
from .model import Content, Descriptor, Entry, EntryKind, Platform
from .options import Options
from .output import CompressionSpec
from .pipeline import ImageInfo, Pass, PassContext, WorkerPool
from .report import Finding, ImageReport, LayerReport, PassReport, PassStatus, Report
from .source import Source, open_source

__version__ = "0.1.0"

__all__ = [
    "ANNOTATION_SOURCE_DIGEST",
    "Change",
    "ChangeRefused",
    "Changes",
    "CompressionSpec",
    "Content",
    "Descriptor",
    "DigestMismatchError",
    "Entry",
    "EntryKind",
    "FileSystem",
    "Finding",
    "FormatError",
    "ImageInfo",
    "ImageReport",
    "IndexedEntry",
    "InputError",
    "LayerError",
    "LayerIndex",
    "LayerReport",
    "LimitError",
    "Limits",
    "MissingBlobError",
    "Node",
    "OptimizerError",
    "Options",
    "OutputError",
    "Pass",
    "PassContext",
    "PassFailedError",
    "PassReport",
    "PassStatus",
    "Platform",
    "PolicyError",
    "RegistryError",
    "Report",
    "RequiredToolNotFound",
    "Source",
    "UsageError",
    "WorkerPool",
    "__version__",
    "build_filesystem",
    "index_layer",
    "open_source",
    "optimize",
    "select_passes",
]

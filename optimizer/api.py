"""``optimize(src, dst, options) -> Report``: the one core every front end calls.

The flow, per run:

1. open the input (``source``) and read its index tree (``tree``);
2. decide every layer's fate (``plan``): per image, decode each layer once, build the merged view, run the
   passes in order, fold their changes into per-layer decisions;
3. execute the plan (``write``): rewrite only the layers that changed, put added files in one new top layer,
   update config and manifest, rewrite the indexes above changed manifests;
4. store the result (``output``) atomically.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from typing import Any

from .documents import ANNOTATION_SOURCE_DIGEST
from .errors import UsageError
from .options import Options
from .output import compressor_versions, source_date_epoch, write_oci_archive, write_oci_dir
from .pipeline import Pass, WorkerPool
from .pipeline import select_passes as _select
from .plan import plan_run
from .report import Report
from .source import open_source
from .spool import Spool
from .write import WriteSettings, write_run

__all__ = ["ANNOTATION_SOURCE_DIGEST", "optimize", "select_passes"]


def select_passes(options: Options) -> list[tuple[type[Pass], Any]]:
    """The passes to run, in pipeline order, each with its options."""
    from passes import PASSES

    pipeline = options.pass_classes if options.pass_classes is not None else PASSES
    return _select(pipeline, options.passes, options.skip, options.pass_options)


def _check(src: str, dst: str | None, options: Options) -> None:
    if dst is None and not options.dry_run:
        raise UsageError("an output path is needed unless dry_run is set")
    if options.output_format not in ("oci-archive", "oci-dir"):
        raise UsageError(f"unknown output format {options.output_format!r}: use oci-archive or oci-dir")
    if options.keep_layers < 0:
        raise UsageError("keep_layers cannot be negative")
    if dst is not None and os.path.abspath(src) == os.path.abspath(dst):
        raise UsageError("the output must not be the input: nothing the user had is overwritten")


def _settings(options: Options, workers: int) -> WriteSettings:
    # Layers: mtimes clamped to SOURCE_DATE_EPOCH, or to 0 when normalising without it (content alone decides
    # the digest). The config's times follow SOURCE_DATE_EPOCH only.
    config_clamp = source_date_epoch()
    layer_clamp = 0 if options.normalize and config_clamp is None else config_clamp
    return WriteSettings(options.compression, options.normalize, workers, layer_clamp, config_clamp)


def optimize(src: str, dst: str | None, options: Options | None = None) -> Report:
    """Optimize the image at ``src`` and write the result to ``dst`` (None only with ``dry_run``)."""
    options = options or Options()
    _check(src, dst, options)
    started = time.monotonic()
    report = Report(
        src, dst or "", options.dry_run, compressors=compressor_versions(), options=options.describe()
    )
    passes = select_passes(options)
    with tempfile.TemporaryDirectory(prefix="oci-optimizer-", dir=options.workdir) as workdir:
        source = open_source(src, workdir)
        report.warnings.extend(source.warnings)
        report.index_digest_before = "sha256:" + hashlib.sha256(source.index_bytes).hexdigest()
        pool = WorkerPool(options.workers)
        settings = _settings(options, pool.workers)
        try:
            spool = Spool(os.path.join(workdir, "new-content.pack"))
            run = plan_run(source, options, passes, pool, spool, workdir, report)
        finally:
            pool.close()
        output = write_run(run, settings, workdir, report, options.progress)
        report.bytes_before = sum(i.size_before for i in report.images)
        report.bytes_after = sum(i.size_after for i in report.images)
        if not options.dry_run:
            assert dst is not None
            if options.progress is not None:
                options.progress("writing output", 0, 1)
            writer = write_oci_dir if options.output_format == "oci-dir" else write_oci_archive
            writer(dst, output.index_bytes, output.docker_manifest, output.blobs)
    report.seconds = round(time.monotonic() - started, 3)
    return report

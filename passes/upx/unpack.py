"""Unpacking a UPX-packed file with the ``upx`` program, and checking that the result is the program it packed."""

from __future__ import annotations

import os
import subprocess
import tempfile

from .detect import HEAD_SIZE, UpxInfo, detect_upx, executable_identity

__all__ = ["UPX_PACKAGE", "UnpackFailed", "unpack_upx", "verify_unpacked"]

UPX_PACKAGE = "upx-ucl"
_UPX_TIMEOUT = 300


class UnpackFailed(Exception):
    """``upx -d`` failed or produced something that is not the program it should be."""


def unpack_upx(data: bytes, upx: str, workdir: str | None = None) -> bytes:
    """Run ``upx -t`` then ``upx -d`` on a packed file in a private directory (under ``workdir``, the run's
    work directory, when given); the unpacked bytes.

    A pure function of its input for the worker pool; ``verify_unpacked`` checks the result.
    """
    with tempfile.TemporaryDirectory(prefix="upx-", dir=workdir) as work:
        packed = os.path.join(work, "packed")
        unpacked = os.path.join(work, "unpacked")
        with open(packed, "wb") as out:
            out.write(data)
        for argv in ([upx, "-q", "-t", packed], [upx, "-q", "-d", "-o", unpacked, packed]):
            try:
                done = subprocess.run(argv, capture_output=True, timeout=_UPX_TIMEOUT, check=False)
            except subprocess.TimeoutExpired as error:
                raise UnpackFailed(f"upx {argv[2]} timed out after {_UPX_TIMEOUT} s") from error
            if done.returncode != 0:
                lines = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
                raise UnpackFailed(f"upx {argv[2]} failed: {lines[-1] if lines else done.returncode}")
        with open(unpacked, "rb") as result:
            return result.read()


def verify_unpacked(info: UpxInfo, output: bytes) -> None:
    """Raise ``UnpackFailed`` unless ``output`` is the program ``info`` describes, unpacked: no longer packed,
    the same format and architecture, and exactly the unpacked size the PackHeader records."""
    if detect_upx(output) is not None:
        raise UnpackFailed("upx -d left a packed file")
    identity = executable_identity(output[:HEAD_SIZE])
    # The linux.exec/linux.sh formats wrap any program, shell scripts included: the size must still match.
    wraps_any = info.upx_format is not None and info.upx_format.startswith(
        ("linux.exec/", "linux.sh/", "bsd.sh/")
    )
    if identity != (info.format, info.architecture) and not (wraps_any and info.unpacked_size is not None):
        shown = "/".join(identity) if identity else "an unknown file"
        raise UnpackFailed(f"upx -d produced {shown}, expected {info.format}/{info.architecture}")
    if info.unpacked_size is not None and len(output) != info.unpacked_size:
        raise UnpackFailed(f"upx -d produced {len(output)} bytes, the header says {info.unpacked_size}")

"""Category ``static-libs``: static libraries and C/C++ headers, in images that have no compiler or linker.

Removes, only when no compiler, linker or compiler library is in the image (``gcc``, ``cc``, ``clang``,
``tcc``, ``ld``, ``go``, ``rustc``, ``gfortran``..., with a target prefix or a version suffix; ``cc1``;
``libclang``, ``libgccjit``, ``libtcc``, ``libbcc``):

- static libraries: files named ``*.a`` whose first bytes are an ``ar`` archive's (``!<arch>``), anywhere
  (``usr/lib/x86_64-linux-gnu/libc_nonshared.a``, ``numpy/_core/lib/libnpymath.a``);
- headers: ``*.h``, ``*.hh``, ``*.hpp``, ``*.hxx`` in a directory named ``include`` (``usr/include``,
  ``usr/local/include``, ``numpy/_core/include``, a venv's ``include``).

Why it is safe: a static library is read only by a linker and a header only by a compiler's preprocessor;
with neither in the image, no program of the image can read them for what they are (a program that compiles
code at run time, as cffi, numba's C paths or bcc do, brings a compiler or compiler library, and then this
category removes nothing).

Never removes: anything when a compiler is present, ``pyconfig.h`` (``sysconfig`` reads it), libtool's
``.la`` files (``libltdl`` reads them at run time), shared libraries, ``.a`` files that are not ``ar``
archives, headers outside an ``include`` directory, directories.
"""

from __future__ import annotations

import re

from optimizer.model import EntryKind

from .rule import Subject, Verdict

__all__ = ["CATEGORY", "compiler", "find"]

CATEGORY = "static-libs"
_TOOLS = (
    r"cc|c\+\+|gcc|g\+\+|cpp|clang|clang\+\+|clang-cpp|tcc|ld|ld\.bfd|ld\.gold|ld\.lld|lld|gold|gfortran|"
    r"gccgo|go|rustc|cargo|zig|ghc|ocamlopt|fpc|nvcc|icc|icx|bpftrace"
)
_COMPILER = re.compile(
    rf"(?:usr/(?:local/)?)?s?bin/(?:[\w.+-]+-)?(?:{_TOOLS})(?:-[\d.]+)?$"
    r"|.*/(?:cc1|cc1plus|lto1)$"
    r"|.*/lib(?:clang|gccjit|tcc|bcc)[\w.+-]*\.so(?:\.[\d.]+)?$"
)
_HEADER = re.compile(r"(?:.*/)?include/(?:.*/)?[^/]+\.(?:h|hh|hpp|hxx)$")
_AR_MAGIC = (b"!<arch>\n", b"!<thin>\n")


def compiler(subject: Subject) -> str | None:
    """The first compiler, linker or compiler library found in the image, or None."""
    for path, node in subject.matching(_COMPILER):
        if node.entry.kind is EntryKind.DIR:
            continue
        return path
    return None


def find(subject: Subject) -> Verdict:
    verdict = Verdict()
    found = compiler(subject)
    candidates = []
    for path in subject.paths:
        node = subject.fs.get(path)
        if node is None or node.content is None or node.entry.kind is EntryKind.SYMLINK:
            continue
        if path.endswith(".a") and node.content.read_head(8) in _AR_MAGIC:
            candidates.append((path, "static library (read by a linker only)"))
        elif _HEADER.match(path) and not path.endswith("/pyconfig.h"):
            candidates.append((path, "C/C++ header (read by a compiler only)"))
    if found is not None:
        if candidates:
            verdict.kept.append(
                (found, "a compiler or linker is in the image: static libraries and headers kept")
            )
        return verdict
    verdict.remove = [(path, f"{reason}; the image has no compiler or linker") for path, reason in candidates]
    return verdict

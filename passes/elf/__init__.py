"""Removing sections from ELF files, in pure Python, for every class, byte order and machine.

The writer drops sections, rebuilds the section header table and ``.shstrtab``, and never moves or changes a
byte that a segment maps: everything up to the end of the last segment (and every allocated section) is
copied verbatim, the kept non-allocated sections after it are laid out in their original order and alignment,
then the new ``.shstrtab`` and the section header table. Only the ELF header's ``e_shoff``/``e_shnum``/
``e_shstrndx`` change in the mapped bytes, as with GNU strip. Removed sections that a segment follows (files
patchelf edited, as in manylinux wheels) cannot go without moving that segment: their bytes become zeros,
which cost nothing in a compressed layer, and the new section table goes there when it fits. GNU strip
moves such segments instead; we never do.

Modes follow GNU ``strip``:

* ``debug``: debugging sections (``.debug*``, ``.zdebug*`` whether SHF_COMPRESSED or not, ``.stab*``,
  ``.line``, ``.gdb_index``, ``.gnu.linkonce.wi.*``, ``.gnu.debuglto_.debug_*``) and their relocations.
  ``.symtab`` is kept and rewritten only as far as section indices need (symbols defined in dropped sections
  go, the relocations, groups and ``.llvm_addrsig`` that name symbols are renumbered).
* ``unneeded`` (the default, as ``strip --strip-unneeded`` on executables and shared objects): also
  ``.symtab``, its ``.strtab`` and whatever only they referred to.
* ``all``: also the toolchain's annotations, which nothing reads at run time: ``.comment``,
  ``.gnu.build.attributes*`` (annobin) and ``.GCC.command.line``.

Relocatable objects (``.o``, ``.ko``, archive members) get ``debug`` at most: linking needs their symbols.
``.gnu_debuglink``/``.gnu_debugaltlink`` are kept unless asked; notes (build-id, properties) are always kept.

``strip_elf`` returns ``None`` when there is nothing to remove, raises ``ElfSkipped`` (with the reason) for
files it deliberately leaves alone, and verifies every result (``verify_stripped``) before returning it.
``strip_archive`` does the same for static archives (``!<arch>``), member by member.

The modules: ``parse`` (headers read with ``struct``, bounds-checked, and cross-checked with pyelftools),
``layout`` (what goes, and the new file laid out without it), ``symbols`` (``.symtab`` and what names its
symbols, renumbered), ``verify`` (every result parsed again by both readers and compared), ``archive``
(static archives, member by member).
"""

from __future__ import annotations

from .archive import AR_MAGIC, strip_archive
from .layout import MODES, StripResult, is_debug_section, strip_elf
from .parse import ELF_MAGIC, ElfSkipped, section_names
from .verify import ElfVerificationError, verify_stripped

__all__ = [
    "AR_MAGIC",
    "ELF_MAGIC",
    "MODES",
    "ElfSkipped",
    "ElfVerificationError",
    "StripResult",
    "is_debug_section",
    "section_names",
    "strip_archive",
    "strip_elf",
    "verify_stripped",
]

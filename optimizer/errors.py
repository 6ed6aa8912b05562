"""The exception tree of oci-optimizer.

Every error the library raises on purpose is an ``OptimizerError``; front ends map these (and only these)
to exit codes or HTTP statuses::

    OptimizerError                      exit 1 unless a subclass says otherwise
    ├── UsageError                      exit 2: bad options, unknown pass names, bad references
    ├── InputError                      exit 3: the input image cannot be read as promised
    │   ├── FormatError                 not an OCI layout / docker archive, or malformed JSON documents
    │   ├── MissingBlobError            a blob that the image needs is not in the input
    │   ├── DigestMismatchError         a blob's bytes do not match its digest or size (or a diff_id)
    │   ├── LayerError                  a layer's tar stream is corrupt, mislabelled or hostile (``--strict``)
    │   └── LimitError                  a resource limit was exceeded (``Limits``: sizes, ratio, counts)
    ├── PassFailedError                 exit 4: a pass raised and ``--strict`` was given
    ├── PolicyError                     exit 5: the image violates a policy the user made fatal (``--upx fail``)
    ├── OutputError                     exit 6: the output cannot be written (disk full, permissions)
    ├── RequiredToolNotFound            exit 7: an optional external program is missing (names the package)
    └── RegistryError                   exit 8: talking to a registry failed (auth, network, protocol)

Messages name the image, the layer and the path, in that order, and the cause is chained with ``raise ... from``.
"""

from __future__ import annotations

import errno

__all__ = [
    "DigestMismatchError",
    "FormatError",
    "InputError",
    "LayerError",
    "LimitError",
    "MissingBlobError",
    "OptimizerError",
    "OutputError",
    "PassFailedError",
    "PolicyError",
    "RegistryError",
    "RequiredToolNotFound",
    "UsageError",
    "out_of_space",
]


class OptimizerError(Exception):
    """Base class of every error raised on purpose by oci-optimizer."""

    exit_code = 1


class UsageError(OptimizerError):
    """The caller asked for something that cannot be done (bad option, unknown pass)."""

    exit_code = 2


class InputError(OptimizerError):
    """The input image cannot be read."""

    exit_code = 3


class FormatError(InputError):
    """The input is not a format we read, or one of its JSON documents is malformed."""


class MissingBlobError(InputError):
    """A blob that is needed is absent from the input."""

    def __init__(self, message: str, digest: str) -> None:
        super().__init__(message)
        self.digest = digest


class DigestMismatchError(InputError):
    """A blob's content does not match the digest or size that names it."""

    def __init__(self, message: str, digest: str) -> None:
        super().__init__(message)
        self.digest = digest


class LayerError(InputError):
    """A layer's tar stream is corrupt, truncated or hostile beyond repair."""


class LimitError(InputError):
    """The input exceeds a resource limit (``optimizer.limits.Limits``); the message names the flag that
    raises it. Raised while streaming, before the excess reaches memory or the work directory."""


class PassFailedError(OptimizerError):
    """A pass raised an exception and strict mode made that fatal."""

    exit_code = 4


class PolicyError(OptimizerError):
    """The image breaks a rule the user made fatal (for instance ``--upx fail``)."""

    exit_code = 5


class OutputError(OptimizerError):
    """The output could not be written."""

    exit_code = 6


class RequiredToolNotFound(OptimizerError):
    """An external program is needed and absent; the message names the package that provides it."""

    exit_code = 7

    def __init__(self, program: str, package: str, purpose: str) -> None:
        super().__init__(f"{program} is required to {purpose}: install the {package} package")
        self.program = program
        self.package = package


class RegistryError(OptimizerError):
    """A registry request failed (network, authentication, protocol)."""

    exit_code = 8


def out_of_space(error: BaseException) -> bool:
    """Whether an OSError says the disk (or the quota, or the file size limit) is full: an output error,
    wherever it happens (the work directory, the destination), never a fault of the input."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

"""Pass ``inject``: add the CA certificates, zone files and passwd/group entries that minimal images lack.

Images built ``FROM scratch``, on distroless bases or around one static binary often fail at run time with
``x509: certificate signed by unknown authority``, show every time in UTC whatever ``TZ`` says, or cannot
name their users (``id``, ``ls -l``, or a runtime refusing ``User: app``). This pass looks at the final
filesystem (whiteouts applied, earlier passes' changes included) and at the image config, and adds only what
is missing, in the one new top layer the core writes (root-owned, fixed mtimes, sorted), with a history entry
built from the reasons given here.

- CA certificates: when no PEM bundle or certificate directory exists at any path that Debian/Ubuntu, Alpine,
  RHEL/Fedora, SUSE, Go's ``crypto/x509``, OpenSSL (and so Python's ``ssl``) read, and ``SSL_CERT_FILE`` /
  ``SSL_CERT_DIR`` in the config do not name one, Mozilla's bundle from ``certifi`` (or ``--ca-bundle FILE``,
  validated as PEM certificates and nothing else) is added where the distribution named by ``/etc/os-release``
  expects it, plus the ``cert.pem`` links that distribution ships. Scratch and unknown images get the Debian
  path and an ``/etc/ssl/cert.pem`` link.
- Zoneinfo: when ``/usr/share/zoneinfo`` is missing, zone files from the ``tzdata`` package: ``UTC``, ``Etc/*``,
  the zone a ``TZ`` variable in the config names, and whatever ``--zoneinfo`` adds (``all`` or a list). When
  the directory exists, only zones named by ``TZ`` or ``--zoneinfo`` that it lacks are added.
- passwd/group: a missing ``/etc/passwd`` or ``/etc/group`` gets ``root`` and ``nobody``/``nogroup``; a ``User``
  in the config that no entry covers gets one (home ``/``, shell ``/sbin/nologin``). A numeric user keeps the
  primary group the runtime gives it today (the group in ``User``, else 0), so injecting never changes which
  files the process can reach. A named user or group that the image does not define gets an id chosen here
  (from ``/home/NAME`` when that exists), with a warning. An existing file is extended only through a full
  copy in the new layer; the lower layer's bytes are never touched.

It never changes or deletes an existing file, never adds anything an image already has, and writes through
symlinked directories (``/etc/ssl/certs -> ...``) to where they lead. It needs ``certifi`` and ``tzdata`` (both
runtime dependencies) and nothing outside Python.
"""

from __future__ import annotations

import argparse
import importlib.resources
import posixpath
import re
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import certifi
import tzdata

from optimizer.errors import UsageError
from optimizer.filesystem import FileSystem
from optimizer.model import Entry, EntryKind
from optimizer.pipeline import PassContext

__all__ = ["CA_BUNDLE_PATHS", "CA_DIRECTORIES", "Inject", "InjectOptions", "validate_ca_bundle"]

KINDS: tuple[str, ...] = ("certs", "zoneinfo", "passwd")

# Every file that some distribution, runtime or library reads as its default CA bundle.
CA_BUNDLE_PATHS: tuple[str, ...] = (
    "etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine, Gentoo, Arch; curl and Go
    "etc/ssl/cert.pem",  # Alpine, LibreSSL, OpenSSL with OPENSSLDIR=/etc/ssl; Go
    "etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL 6+; Go
    "etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  # RHEL 7+, CentOS, Amazon Linux; Go
    "etc/pki/tls/cert.pem",  # OpenSSL on RHEL/Fedora (OPENSSLDIR=/etc/pki/tls)
    "etc/pki/tls/cacert.pem",  # OpenELEC; Go
    "etc/ssl/ca-bundle.pem",  # SUSE, openSUSE; Go
    "var/lib/ca-certificates/ca-bundle.pem",  # SUSE (what /etc/ssl/ca-bundle.pem points to)
    "usr/lib/ssl/cert.pem",  # OpenSSL on Debian/Ubuntu (OPENSSLDIR=/usr/lib/ssl): Python's ssl default cafile
    "usr/local/ssl/cert.pem",  # OpenSSL built from source
    "usr/local/share/certs/ca-root-nss.crt",  # FreeBSD-style layouts; Go
    "etc/ssl/certs/ca-bundle.crt",  # older Fedora/Mandriva
)

# Directories of hashed or plain PEM certificates (OpenSSL's CApath, Go's certDirectories).
CA_DIRECTORIES: tuple[str, ...] = (
    "etc/ssl/certs",
    "etc/pki/tls/certs",
    "usr/lib/ssl/certs",
    "usr/local/ssl/certs",
    "etc/openssl/certs",
)

# OpenSSL directories that get a ``cert.pem`` link when they exist (Python's ssl default cafile lives there).
_OPENSSL_DIRS: tuple[str, ...] = ("usr/lib/ssl", "usr/local/ssl")

_PEM_MARK = b"-----BEGIN CERTIFICATE-----"
_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL
)
_HEAD = 64 * 1024

ZONEINFO_DIR = "usr/share/zoneinfo"
# Tables and data files that ship beside the zone files; added with ``--zoneinfo all``.
_ZONEINFO_TABLES: tuple[str, ...] = (
    "iso3166.tab",
    "leapseconds",
    "tzdata.zi",
    "zone.tab",
    "zone1970.tab",
    "zonenow.tab",
)

NOLOGIN = "/sbin/nologin"
_FIRST_ALLOCATED_ID = 1000
_NOBODY_ID = 65534
_NONROOT_ID = 65532  # distroless's "nonroot"; a uid images often run as without defining it


@dataclass(frozen=True)
class InjectOptions:
    certs: bool = True
    zoneinfo: bool = True
    passwd: bool = True
    ca_bundle: str = ""  # a PEM file used instead of certifi's bundle
    zones: str = "default"  # "default", "all", or a comma list of zones added to the default ones


# ----------------------------------------------------------------------------------------------------------
# Pure helpers: parsing and building the injected files


def validate_ca_bundle(data: bytes, what: str) -> int:
    """Check that ``data`` is a PEM bundle of X.509 certificates, loadable by OpenSSL; return their count.

    Any other PEM block (a private key above all) is refused: it would be shipped to everyone who pulls the
    image. Text between blocks (comments, as in certifi's bundle) is allowed.
    """
    blocks = list(_PEM_BLOCK.finditer(data))
    if not blocks:
        raise UsageError(f"{what}: no PEM certificate found")
    others = sorted({m.group(1).decode("ascii") for m in blocks if m.group(1) != b"CERTIFICATE"})
    if others:
        raise UsageError(f"{what}: contains PEM blocks other than certificates: {', '.join(others)}")
    ders: list[bytes] = []
    for number, match in enumerate(blocks, 1):
        try:
            ders.append(ssl.PEM_cert_to_DER_cert(match.group(0).decode("ascii")))
        except (ValueError, UnicodeDecodeError) as error:
            raise UsageError(f"{what}: certificate {number} is not valid PEM: {error}") from error
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=b"".join(ders))
    except ssl.SSLError as error:
        raise UsageError(f"{what}: OpenSSL cannot load the certificates: {error}") from error
    loaded = int(context.cert_store_stats()["x509"])
    if loaded != len(set(ders)):
        raise UsageError(f"{what}: OpenSSL loaded {loaded} of {len(set(ders))} certificates")
    return loaded

"""CA certificates: what counts as a bundle an image already has, what a bundle may contain, where it goes.

``find_ca_certificates`` looks where Debian/Ubuntu, Alpine, RHEL/Fedora, SUSE, Go's ``crypto/x509`` and OpenSSL
look (and where ``SSL_CERT_FILE``/``SSL_CERT_DIR`` point); ``validate_ca_bundle`` accepts PEM certificates and
nothing else; ``CERT_LAYOUTS`` says where each distribution family keeps its bundle and the links it ships.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

from optimizer.errors import UsageError
from optimizer.filesystem import FileSystem

__all__ = [
    "CA_BUNDLE_PATHS",
    "CA_DIRECTORIES",
    "CERT_LAYOUTS",
    "HEAD",
    "OPENSSL_DIRS",
    "CertLayout",
    "find_ca_certificates",
    "validate_ca_bundle",
]

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
OPENSSL_DIRS: tuple[str, ...] = ("usr/lib/ssl", "usr/local/ssl")
PEM_MARK = b"-----BEGIN CERTIFICATE-----"
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)
HEAD = 64 * 1024


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


@dataclass(frozen=True)
class CertLayout:
    """Where a family keeps its bundle, and the links it ships to it (link path -> link target path)."""

    bundle: str
    links: Mapping[str, str] = field(default_factory=dict)


CERT_LAYOUTS: Mapping[str, CertLayout] = {
    "debian": CertLayout("etc/ssl/certs/ca-certificates.crt"),
    "alpine": CertLayout(
        "etc/ssl/certs/ca-certificates.crt", {"etc/ssl/cert.pem": "etc/ssl/certs/ca-certificates.crt"}
    ),
    "rhel": CertLayout(
        "etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
        {
            "etc/pki/tls/certs/ca-bundle.crt": "etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
            "etc/pki/tls/cert.pem": "etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
        },
    ),
    "suse": CertLayout("etc/ssl/ca-bundle.pem"),
    "": CertLayout(
        "etc/ssl/certs/ca-certificates.crt", {"etc/ssl/cert.pem": "etc/ssl/certs/ca-certificates.crt"}
    ),
}


def _pem_file(fs: FileSystem, path: str) -> bool:
    node = fs.lookup(path)
    return node is not None and node.content is not None and PEM_MARK in node.content.read_head(HEAD)


def find_ca_certificates(fs: FileSystem, env: Mapping[str, str]) -> str | None:
    """The first CA bundle, or certificate in a CA directory, the image already has; None when none."""
    files = [p for p in (env.get("SSL_CERT_FILE", "").lstrip("/"),) if p]
    for path in (*files, *CA_BUNDLE_PATHS):
        if _pem_file(fs, path):
            return path
    directories = [d.lstrip("/") for d in env.get("SSL_CERT_DIR", "").split(":") if d.strip("/")]
    for directory in (*directories, *CA_DIRECTORIES):
        resolved = fs.resolve(directory)
        if resolved is None or not fs.is_directory(resolved):
            continue
        for child in fs.children(resolved):
            if _pem_file(fs, child):
                return child
    return None

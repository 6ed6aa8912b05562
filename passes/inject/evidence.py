"""Whether anything in an image needs CA certificates, zone files or user names: the evidence ``inject`` acts on.

An addition is made only when something in the image shows it needs it; the first such thing is the reason
given in the report ("/usr/sbin/nginx links libssl.so.3"). What counts:

- certificates: a program or library that trusts the system's roots: it calls OpenSSL's default paths
  (``SSL_CTX_set_default_verify_paths``, ``X509_STORE_set_default_paths``...) or GnuTLS's system trust (Python's
  ``_ssl``, wget), or links a TLS library and loads CA files by a name that is a system
  bundle's (libcurl's built-in ``ca-certificates.crt``); Python's ``ssl`` module (``PyInit__ssl``, also
  when built into the interpreter); a Go program that verifies against the system's roots
  (``crypto/x509.loadSystemRoots``); a static program or an executable with its TLS library built in that
  reads ``SSL_CERT_FILE`` or names a bundle. Linking a TLS library is not enough: a server such as nginx
  loads only the CA files its configuration names, and ``libcrypto`` alone hashes and signs. A package
  manager's own transports (apt's methods, apk, dnf's librepo, zypper) are not the image's programs: they
  fetch from repositories at build time, and Debian's and Ubuntu's base images ship apt without a bundle on
  purpose. A JRE reads its own keystore (``lib/security/cacerts``), not a PEM bundle: reported, not evidence.
  Nor is a program or library that carries its own roots (``OWN_ROOTS`` PEM certificates or more built in):
  Debian's Node.js calls OpenSSL's default paths but verifies against the 147 Mozilla roots compiled into
  ``libnode``, reading the system bundle only for extra CAs (without one it prints a warning and works).
- zone files: the config's ``TZ``, a dangling ``/etc/localtime`` (checked by the caller and here), a Go
  program that loads zones by name (``time.LoadLocation``, without ``time/tzdata`` built in), Python's
  ``zoneinfo`` (``PyInit__zoneinfo``) where no ``tzdata`` package is installed. glibc alone is not: without
  ``TZ`` and ``/etc/localtime`` it uses UTC, which adding UTC would not change.
- user names: a dynamically linked program that looks users or groups up (``getpwnam``, ``getpwuid``,
  ``getgrnam``, ``initgroups``...; the C library itself excluded), a Go program using ``os/user``, a static
  program that reads ``/etc/passwd``. The config's ``User`` is the caller's. Package managers count for no kind.

Cost: every regular file's first 4 bytes are read; an ELF file's headers, dynamic section and dynamic string
table (a few small reads); only Go programs, programs that load CA files by name, static programs and, as a
last resort for certificates, dynamically linked executables are read whole (streamed), and only for the
kinds still unanswered.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field

from optimizer.filesystem import FileSystem
from optimizer.model import Content, EntryKind

from .programs import Handles, Program, contains, count, is_elf, read_program

__all__ = ["CERTS", "KINDS", "NAMES", "ZONES", "Evidence", "Need", "find_evidence"]

CERTS, ZONES, NAMES = "certs", "zoneinfo", "passwd"
KINDS = (CERTS, ZONES, NAMES)

TLS_LIBRARIES = ("libssl.so", "libgnutls.so", "libnss3.so", "libmbedtls.so", "libwolfssl.so")
# What a program calls to trust the system's roots (OpenSSL's default paths, GnuTLS's system trust, wolfSSL's).
DEFAULT_STORE = (
    b"SSL_CTX_set_default_verify_paths", b"X509_STORE_set_default_paths", b"SSL_CTX_set_default_verify_file",
    b"SSL_CTX_set_default_verify_dir", b"gnutls_certificate_set_x509_system_trust",
    b"gnutls_x509_trust_list_add_system_trust", b"wolfSSL_CTX_load_system_CA_certs",
)  # fmt: skip
# What loads CA files a program names: evidence only when it names a system bundle (libcurl's built-in path).
EXPLICIT_STORE = (
    b"SSL_CTX_load_verify_locations", b"SSL_CTX_load_verify_file", b"X509_STORE_load_file",
    b"X509_STORE_load_locations", b"gnutls_certificate_set_x509_trust_file",
)  # fmt: skip
# The TLS libraries define those functions themselves; that is no use of them.
_TLS_LIBRARY_FILES = ("libssl", "libcrypto", "libgnutls", "libnss3", "libwolfssl", "libmbed", "libboringssl")
# Package managers fetch from their repositories at build time; they are not the image's programs. Debian's
# and Ubuntu's base images ship apt (whose https method uses the system's trust) without a bundle on purpose.
_PACKAGE_TOOL_DIRS = ("usr/lib/apt/", "usr/libexec/apt/")
_PACKAGE_TOOLS = {
    "apt",
    "apt-get",
    "apt-cache",
    "apt-key",
    "apk",
    "dnf",
    "dnf-3",
    "microdnf",
    "yum",
    "zypper",
}
_PACKAGE_TOOL_LIBRARIES = ("libapt-", "libapk", "librepo", "libzypp", "libdnf", "librpm")
NAME_LOOKUPS = (
    b"getpwnam", b"getpwuid", b"getpwnam_r", b"getpwuid_r", b"getpwent", b"getgrnam", b"getgrgid",
    b"getgrnam_r", b"getgrgid_r", b"getgrouplist", b"initgroups",
)  # fmt: skip
# The C library and its loader and NSS modules define the lookups; they need nothing for it.
_LIBC_PREFIXES = ("libc.so", "libc-", "libc.musl", "ld-linux", "ld-musl", "ld64.so", "libnss_", "libpthread")
GO_ROOTS = (b"crypto/x509.loadSystemRoots", b"crypto/x509.systemRootsPool")
GO_ZONES, GO_EMBEDDED_ZONES = b"time.LoadLocation", b"time/tzdata."
GO_USERS = (b"os/user.Current", b"os/user.Lookup")
# What a program whose TLS library is built in names when it reads the system's roots.
STORE_NEEDLES = (b"SSL_CERT_FILE", b"ca-certificates.crt", b"tls-ca-bundle.pem", b"ca-bundle.crt")
PASSWD_NEEDLES = (b"/etc/passwd",)
PY_TZDATA = "site-packages/tzdata/zoneinfo"
# A file with this many PEM certificates built in carries a root store of its own (Node.js: 147).
OWN_ROOTS, PEM_MARKER = 50, b"-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True)
class Need:
    """One kind of addition and what shows it is needed."""

    kind: str  # CERTS, ZONES or NAMES
    path: str  # the file that shows it (root-relative; "" for the config)
    why: str  # "links libssl.so.3"
    executable: bool = False  # the file is a program (preferred as the reason over a library)

    def text(self) -> str:
        return f"/{self.path} {self.why}" if self.path else self.why


@dataclass
class Evidence:
    """What was found for each kind asked about (absent: nothing needs it), and how much was read."""

    needs: dict[str, Need] = field(default_factory=dict)
    elf_files: int = 0  # ELF files whose headers were read
    read_whole: int = 0  # files read whole (Go, static, the last resort for certificates)
    notes: list[str] = field(default_factory=list)  # what a reader should know (a JRE, say)

    def looked(self) -> str:
        return f"{self.elf_files} ELF file{'' if self.elf_files == 1 else 's'} read, {self.read_whole} of them whole"


def _is_tls_library(path: str) -> bool:
    return path.rsplit("/", 1)[-1].startswith(_TLS_LIBRARY_FILES)


def _is_package_tool(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return (
        path.startswith(_PACKAGE_TOOL_DIRS)
        or name in _PACKAGE_TOOLS
        or name.startswith(_PACKAGE_TOOL_LIBRARIES)
    )


def read_program_of(fs: FileSystem, path: str) -> Program | None:
    node = fs.get(path)
    if node is None or node.content is None:
        return None
    with Handles() as handles:
        return read_program(node.content, handles)


def _is_libc(path: str) -> bool:
    return path.rsplit("/", 1)[-1].startswith(_LIBC_PREFIXES)


def _tls_library(program: Program) -> str | None:
    for library in program.needed:
        if library.startswith(TLS_LIBRARIES):
            return library
    return None


def _name_lookup(program: Program) -> bytes | None:
    return next((name for name in NAME_LOOKUPS if program.has_symbol(name)), None)


class _Found:
    """The evidence gathered so far: an executable wins over a library as the reason shown."""

    def __init__(self, wanted: Iterable[str]) -> None:
        self.wanted = set(wanted)
        self.needs: dict[str, Need] = {}

    def add(self, need: Need) -> None:
        if need.kind not in self.wanted:
            return
        current = self.needs.get(need.kind)
        if current is None or (need.executable and not current.executable):
            self.needs[need.kind] = need

    def settled(self, kind: str) -> bool:
        """A kind is settled once a program (not just a library) shows it, or it was not asked about."""
        need = self.needs.get(kind)
        return kind not in self.wanted or (need is not None and need.executable)

    def all_settled(self) -> bool:
        return all(self.settled(kind) for kind in KINDS)

    def open(self) -> set[str]:
        return {kind for kind in self.wanted if kind not in self.needs}


def find_evidence(fs: FileSystem, wanted: Iterable[str]) -> Evidence:
    """What in ``fs`` needs each kind of ``wanted`` (CERTS, ZONES, NAMES)."""
    found = _Found(wanted)
    evidence = Evidence()
    if not found.wanted:
        return evidence
    if ZONES in found.wanted:
        _localtime(fs, found)
    python_tzdata = any(path.endswith(PY_TZDATA) for path, _ in fs.items() if path.endswith("/zoneinfo"))
    go: list[str] = []
    explicit: list[tuple[str, str]] = []
    static: list[str] = []
    executables: list[str] = []
    own_roots: set[str] = set()  # files with a root store of their own: no evidence, whatever they name
    with Handles() as handles:
        for path, node in fs.unique_files():
            content = node.content
            if content is None or not is_elf(content, handles):
                continue
            evidence.elf_files += 1
            program = read_program(content, handles)
            if program is None:
                continue
            if program.go:
                go.append(path)
                continue
            if program.static:
                static.append(path)
            elif program.interpreter:
                executables.append(path)
            candidate = _from_dynamic(path, program, python_tzdata, found, explicit)
            if (
                candidate is not None
                and not found.settled(CERTS)
                and not _unless_own_roots(content, candidate, found, evidence)
            ):
                own_roots.add(path)
            if found.all_settled():
                break
    for path in go:
        if found.all_settled():
            break
        _from_go(fs, path, found, evidence)
    for path, library in explicit:
        if found.settled(CERTS):
            break
        _from_explicit(fs, path, library, found, evidence)
    for path in static:
        if not found.open():
            break
        _from_contents(fs, path, found, evidence, (CERTS, NAMES))
    for path in executables:
        if CERTS not in found.open():
            break
        if path not in own_roots:  # its built-in OpenSSL names SSL_CERT_FILE (nodejs.org's node)
            _from_contents(fs, path, found, evidence, (CERTS,))
    if CERTS in found.open():
        evidence.notes.extend(_java_notes(fs))
    evidence.needs = found.needs
    return evidence


def _from_dynamic(
    path: str, program: Program, python_tzdata: bool, found: _Found, explicit: list[tuple[str, str]]
) -> Need | None:
    """Record what a dynamically linked file shows; a file that loads the system's roots is returned
    instead, for the caller to check that it has no roots of its own."""
    if _is_package_tool(path):
        return None
    candidate = None
    running = program.runs
    if not _is_tls_library(path):
        library = _tls_library(program)
        linked = f"links {library} and " if library is not None else ""
        default = next((name for name in DEFAULT_STORE if program.has_symbol(name)), None)
        if default is not None:
            candidate = Need(CERTS, path, f"{linked}loads the system's roots ({default.decode()})", running)
        elif program.has_symbol(b"PyInit__ssl"):
            found.add(Need(CERTS, path, "is Python's ssl module", running))
        elif library is not None and any(program.has_symbol(name) for name in EXPLICIT_STORE):
            explicit.append((path, library))  # loads a file it names: a bundle path, or only its own config's
    if not python_tzdata and program.has_symbol(b"PyInit__zoneinfo"):
        found.add(Need(ZONES, path, "is Python's zoneinfo module (no tzdata package installed)", running))
    if not _is_libc(path):
        lookup = _name_lookup(program)
        if lookup is not None:
            found.add(Need(NAMES, path, f"looks users up ({lookup.decode()})", running))
    return candidate


def _unless_own_roots(content: Content, need: Need, found: _Found, evidence: Evidence) -> bool:
    """``need`` is evidence unless its file carries a root store of its own (then it is noted); whether it
    was."""
    evidence.read_whole += 1
    own = count(content, PEM_MARKER, OWN_ROOTS)
    if own < OWN_ROOTS:
        found.add(need)
        return True
    evidence.notes.append(
        f"/{need.path} loads the system's roots but carries at least {own} root certificates of its own "
        "(as Node.js does): not evidence that the image needs a CA bundle"
    )
    return False


def _from_explicit(fs: FileSystem, path: str, library: str, found: _Found, evidence: Evidence) -> None:
    """A program that loads CA files by name: evidence when one of the names is a system bundle's."""
    node = fs.get(path)
    if node is None or node.content is None:
        return
    evidence.read_whole += 1
    seen = contains(node.content, STORE_NEEDLES)
    store = next((n for n in STORE_NEEDLES if n in seen), None)
    if store is not None:
        program = read_program_of(fs, path)
        running = program.runs if program is not None else False
        found.add(
            Need(CERTS, path, f"links {library} and reads the system's roots ({store.decode()})", running)
        )


def _from_go(fs: FileSystem, path: str, found: _Found, evidence: Evidence) -> None:
    node = fs.get(path)
    if node is None or node.content is None:
        return
    evidence.read_whole += 1
    seen = contains(node.content, (*GO_ROOTS, GO_ZONES, GO_EMBEDDED_ZONES, *GO_USERS))
    if seen & set(GO_ROOTS):
        found.add(
            Need(CERTS, path, "is a Go program that verifies against the system's roots (crypto/x509)", True)
        )
    if GO_ZONES in seen and GO_EMBEDDED_ZONES not in seen:
        found.add(Need(ZONES, path, "is a Go program that loads zones by name (time.LoadLocation)", True))
    if seen & set(GO_USERS):
        found.add(Need(NAMES, path, "is a Go program that looks users up (os/user)", True))


def _from_contents(
    fs: FileSystem, path: str, found: _Found, evidence: Evidence, kinds: tuple[str, ...]
) -> None:
    node = fs.get(path)
    open_kinds = found.open()
    needles: list[bytes] = []
    if CERTS in kinds and CERTS in open_kinds:
        needles += STORE_NEEDLES
    if NAMES in kinds and NAMES in open_kinds and not _is_libc(path):
        needles += PASSWD_NEEDLES
    if node is None or node.content is None or not needles:
        return
    evidence.read_whole += 1
    seen = contains(node.content, needles)
    store = next((n for n in STORE_NEEDLES if n in seen), None)
    if store is not None:
        found.add(
            Need(
                CERTS,
                path,
                f"has a TLS library built in that reads the system's roots ({store.decode()})",
                True,
            )
        )
    if PASSWD_NEEDLES[0] in seen:
        found.add(Need(NAMES, path, "reads /etc/passwd", True))


def _localtime(fs: FileSystem, found: _Found) -> None:
    node = fs.get("etc/localtime")
    if node is None or node.entry.kind is not EntryKind.SYMLINK or fs.lookup("etc/localtime") is not None:
        return
    target = posixpath.normpath(posixpath.join("/etc", node.entry.link))
    found.add(Need(ZONES, "etc/localtime", f"points to {target}, which is missing", True))


def localtime_zone(fs: FileSystem) -> str:
    """The zone a dangling ``/etc/localtime`` names (``Europe/Paris``), or ""."""
    node = fs.get("etc/localtime")
    if node is None or node.entry.kind is not EntryKind.SYMLINK or fs.lookup("etc/localtime") is not None:
        return ""
    target = posixpath.normpath(posixpath.join("/etc", node.entry.link))
    marker = "/zoneinfo/"
    return target.split(marker, 1)[1] if marker in target else ""


def _java_notes(fs: FileSystem) -> list[str]:
    notes = []
    for path, _ in fs.files():
        if not path.endswith("/libjava.so"):
            continue
        lib = posixpath.dirname(path)
        home = posixpath.dirname(lib) if posixpath.basename(lib) != "lib" else lib
        home = posixpath.dirname(home) if posixpath.basename(home) == "lib" else home
        store = f"{home}/lib/security/cacerts"
        if fs.lookup(store) is not None:
            notes.append(f"the JRE at /{home} reads its own keystore /{store}, not a PEM bundle")
        else:
            notes.append(
                f"the JRE at /{home} has no keystore /{store}: Java's TLS will fail, and a PEM bundle would not help it"
            )
    return notes

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
- Zoneinfo: when ``/usr/share/zoneinfo`` is missing, zone files from the ``tzdata`` package: ``UTC``,
  ``Etc/*``, the zone a ``TZ`` variable in the config names, and whatever ``--zoneinfo`` adds (``all`` or a
  list). When the directory exists, only zones named by ``TZ`` or ``--zoneinfo`` that it lacks are added.
- passwd/group: a missing ``/etc/passwd`` or ``/etc/group`` gets ``root`` and ``nobody``/``nogroup``; a
  ``User`` in the config that no entry covers gets one (home ``/``, shell ``/sbin/nologin``). A numeric user
  keeps the primary group the runtime gives it today (the group in ``User``, else 0), so injecting never
  changes which files the process can reach. A named user or group that the image does not define gets an
  id chosen here (from ``/home/NAME`` when that exists), with a warning. An existing file is extended only
  through a full copy in the new layer; the lower layer's bytes are never touched.

It never changes or deletes an existing file, never adds anything an image already has, and writes through
symlinked directories (``/etc/ssl/certs -> ...``) to where they lead. It needs ``certifi`` and ``tzdata``
(both runtime dependencies) and nothing outside Python.
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

from optimizer.errors import OptimizerError, UsageError
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
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)
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


def parse_os_release(data: bytes) -> dict[str, str]:
    """``KEY=value`` lines of os-release(5), with shell quoting removed."""
    values: dict[str, str] = {}
    for raw in data.decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = re.sub(r"\\([\\$\"`])", r"\1", value)
        values[key.strip()] = value
    return values


def distribution_family(os_release: Mapping[str, str]) -> str:
    """The family whose CA layout an image follows, from ID and ID_LIKE: debian, alpine, rhel, suse, or ""
    (scratch or unknown)."""
    ids = [os_release.get("ID", "").lower(), *os_release.get("ID_LIKE", "").lower().split()]
    for name in ids:
        if name in ("debian", "ubuntu", "arch", "gentoo"):
            return "debian"
        if name in ("alpine", "wolfi", "chainguard"):
            return "alpine"
        if name in ("rhel", "fedora", "centos", "rocky", "almalinux", "amzn", "ol", "mariner", "azurelinux"):
            return "rhel"
        if name in ("suse", "sles", "opensuse") or name.startswith("opensuse"):
            return "suse"
    return ""


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


def relative_link(link: str, target: str) -> str:
    """The relative symlink text at ``link`` that reaches ``target`` (both root-relative): relative links
    resolve the same in a container, a chroot and an unpacked tree on the host."""
    return posixpath.relpath("/" + target, posixpath.dirname("/" + link))


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int


def parse_passwd(text: str) -> list[PasswdEntry]:
    """The well-formed entries of a passwd file; comments, NIS ``+``/``-`` lines and junk are skipped."""
    out: list[PasswdEntry] = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 7 or not fields[0] or fields[0][0] in "#+-":
            continue
        if fields[2].isdigit() and fields[3].isdigit():
            out.append(PasswdEntry(fields[0], int(fields[2]), int(fields[3])))
    return out


def parse_group(text: str) -> list[GroupEntry]:
    out: list[GroupEntry] = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 4 or not fields[0] or fields[0][0] in "#+-":
            continue
        if fields[2].isdigit():
            out.append(GroupEntry(fields[0], int(fields[2])))
    return out


def passwd_line(name: str, uid: int, gid: int, gecos: str, home: str, shell: str) -> str:
    return f"{name}:x:{uid}:{gid}:{gecos}:{home}:{shell}\n"


def group_line(name: str, gid: int) -> str:
    return f"{name}:x:{gid}:\n"


def extended(old: str, lines: Sequence[str]) -> str:
    """``old`` with ``lines`` appended, a newline added first when the old file lacks its final one."""
    if old and not old.endswith("\n"):
        old += "\n"
    return old + "".join(lines)


# A user or group name we may write into passwd/group (useradd's rule, digits first allowed for uids).
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\$?$")


def split_user(user: str) -> tuple[str, str]:
    """Config ``User`` -> (user, group): ``name``, ``uid``, ``name:group``, ``uid:gid`` and mixes."""
    user = user.strip()
    name, _, group = user.partition(":")
    return name, group


# ----------------------------------------------------------------------------------------------------------
# Zone selection


def tzdata_zones() -> list[str]:
    """Every zone the installed ``tzdata`` package ships (its ``zones`` list)."""
    text = importlib.resources.files("tzdata").joinpath("zones").read_text("utf-8")
    return sorted(line.strip() for line in text.splitlines() if line.strip())


def tzdata_file(name: str) -> bytes:
    resource = importlib.resources.files("tzdata.zoneinfo")
    for part in name.split("/"):
        resource = resource.joinpath(part)
    return resource.read_bytes()


def default_zones(known: Iterable[str]) -> list[str]:
    return sorted(z for z in known if z == "UTC" or z.startswith("Etc/"))


def zone_from_tz(value: str) -> str:
    """The zone a ``TZ`` value names: ``Europe/Paris``, ``:Europe/Paris``, ``/usr/share/zoneinfo/...``.

    A POSIX rule (``CET-1CEST,M3.5.0,M10.5.0/3``) names no file and gives "".
    """
    value = value.strip().removeprefix(":")
    prefix = "/" + ZONEINFO_DIR + "/"
    if value.startswith(prefix):
        value = value[len(prefix) :]
    if not value or value.startswith("/") or "," in value or ".." in value.split("/"):
        return ""
    return value


def parse_zone_choice(choice: str, known: Sequence[str]) -> tuple[bool, list[str]]:
    """``--zoneinfo`` -> (all zones?, extra zones). Unknown zone names are a usage error."""
    choice = choice.strip()
    if choice in ("", "default"):
        return False, []
    if choice == "all":
        return True, []
    names = [n.strip().removeprefix("/") for n in choice.split(",") if n.strip()]
    known_set = set(known)
    unknown = [n for n in names if n not in known_set and n not in ("default",)]
    if unknown:
        raise UsageError(
            f"--zoneinfo: unknown zones (not in tzdata {tzdata.IANA_VERSION}): {', '.join(unknown)}"
        )
    return False, sorted({n for n in names if n != "default"})


def config_env(config: Mapping[str, Any]) -> dict[str, str]:
    inner = config.get("config") or {}
    env: dict[str, str] = {}
    for item in inner.get("Env") or []:
        if isinstance(item, str) and "=" in item:
            key, value = item.split("=", 1)
            env[key] = value
    return env


def config_user(config: Mapping[str, Any]) -> str:
    inner = config.get("config") or {}
    user = inner.get("User") or ""
    return user if isinstance(user, str) else ""


# ----------------------------------------------------------------------------------------------------------
# Placing additions


@dataclass(frozen=True)
class _Addition:
    entry: Entry
    data: bytes | None
    reason: str


class _Plan:
    """The additions of one run, collected, then recorded sorted (parent directories first)."""

    def __init__(self, ctx: PassContext) -> None:
        self._ctx = ctx
        self._fs = ctx.fs
        self._items: dict[str, _Addition] = {}

    def __contains__(self, path: str) -> bool:
        return path in self._items

    def __len__(self) -> int:
        return len(self._items)

    def place(self, path: str) -> str | None:
        """Where ``path`` really goes, symlinked parents followed inside the root (the core creates the parent
        directories that do not exist yet); None when a parent leads nowhere or is not a directory, or when a
        directory stands at the path itself."""
        parts = path.split("/")
        real = ""
        for number, part in enumerate(parts[:-1]):
            candidate = f"{real}/{part}" if real else part
            if self._fs.get(candidate) is None and not self._fs.implied_directory(candidate):
                real = "/".join([candidate, *parts[number + 1 : -1]])
                break
            resolved = self._fs.resolve(candidate)
            if resolved is None or not self._fs.is_directory(resolved):
                return None
            real = resolved
        final = f"{real}/{parts[-1]}" if real else parts[-1]
        existing = self._fs.get(final)
        if existing is not None and existing.entry.kind is EntryKind.DIR:
            return None
        return final

    def _record(self, path: str, entry: Entry, data: bytes | None, reason: str) -> str | None:
        final = self.place(path)
        if final is None:
            self._ctx.warn(
                f"{self._ctx.image.name}: /{path}: not added ({reason}): a parent is not a directory or a "
                "symlink on the way leads nowhere, or a directory stands there"
            )
            return None
        self._items[final] = _Addition(entry.with_path(final), data, reason)
        return final

    def file(self, path: str, data: bytes, reason: str, mode: int = 0o644) -> str | None:
        return self._record(path, Entry(path, EntryKind.FILE, mode=mode, uid=0, gid=0, mtime=0), data, reason)

    def symlink(self, path: str, target: str, reason: str) -> str | None:
        """A relative symlink at ``path`` to the root-relative ``target``."""
        final = self.place(path)
        link = relative_link(final or path, target)
        entry = Entry(path, EntryKind.SYMLINK, mode=0o777, uid=0, gid=0, mtime=0, link=link)
        return self._record(path, entry, None, reason)

    def commit(self) -> None:
        for path in sorted(self._items):
            item = self._items[path]
            self._ctx.changes.add(item.entry, item.data, item.reason)
            size = len(item.data) if item.data is not None else 0
            details: dict[str, Any] = {"kind": item.entry.kind.value}
            if item.entry.kind is EntryKind.SYMLINK:
                details["link"] = item.entry.link
            self._ctx.note(path, "added", item.reason, 0, size, **details)


def _pem_file(fs: FileSystem, path: str) -> bool:
    node = fs.lookup(path)
    return node is not None and node.content is not None and _PEM_MARK in node.content.read_head(_HEAD)


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


def _is_file(fs: FileSystem, path: str) -> bool:
    node = fs.lookup(path)
    return node is not None and node.content is not None


def _free_id(used: set[int], start: int = _FIRST_ALLOCATED_ID) -> int:
    candidate = start
    while candidate in used:
        candidate += 1
    return candidate


def _unique_name(preferred: str, fallback: str, taken: set[str]) -> str:
    if preferred not in taken:
        return preferred
    candidate, number = fallback, 1
    while candidate in taken:
        number += 1
        candidate = f"{fallback}_{number}"
    return candidate


@dataclass
class _Accounts:
    """The passwd and group entries an image will have, and the lines this run adds to each."""

    users: list[PasswdEntry]
    groups: list[GroupEntry]
    passwd_lines: list[str] = field(default_factory=list)
    group_lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add_user(self, name: str, uid: int, gid: int, home: str, shell: str) -> None:
        self.users.append(PasswdEntry(name, uid, gid))
        self.passwd_lines.append(passwd_line(name, uid, gid, name, home, shell))

    def add_group(self, name: str, gid: int) -> None:
        self.groups.append(GroupEntry(name, gid))
        self.group_lines.append(group_line(name, gid))

    def group_for(self, group: str) -> int:
        """The gid of ``group`` (a name or a number), adding an entry when none covers it."""
        if group.isdigit():
            gid = int(group)
            if all(g.gid != gid for g in self.groups):
                preferred = "nonroot" if gid == _NONROOT_ID else f"group{gid}"
                self.add_group(_unique_name(preferred, f"group{gid}", {g.name for g in self.groups}), gid)
            return gid
        for entry in self.groups:
            if entry.name == group:
                return entry.gid
        gid = _free_id({g.gid for g in self.groups})
        self.add_group(group, gid)
        self.warnings.append(f"group {group!r} of the config's User is not defined: added with gid {gid}")
        return gid

    def cover_user(self, user: str, group: str, fs: FileSystem) -> None:
        """Add what the config's ``User`` (``user[:group]``) needs and the image lacks."""
        gid = self.group_for(group) if group else None
        if user.isdigit():
            uid = int(user)
            if any(u.uid == uid for u in self.users):
                return
            preferred = "nonroot" if uid == _NONROOT_ID else f"user{uid}"
            name = _unique_name(preferred, f"user{uid}", {u.name for u in self.users})
            # The runtime gives a uid without a passwd entry the group in User, else gid 0: keep that.
            self.add_user(name, uid, gid if gid is not None else 0, "/", NOLOGIN)
            return
        if any(u.name == user for u in self.users):
            return
        used_uids = {u.uid for u in self.users}
        home = fs.lookup(f"home/{user}")
        owner = home.entry if home is not None and home.entry.kind is EntryKind.DIR else None
        from_home = owner is not None and owner.uid != 0 and owner.uid not in used_uids
        if owner is not None and from_home:
            uid, origin = owner.uid, f"the owner of /home/{user}"
        else:
            uid, origin = _free_id(used_uids), "the first free uid"
        if gid is None:
            gids = {g.gid for g in self.groups}
            if owner is not None and from_home and owner.gid != 0:
                gid = owner.gid
            else:
                gid = uid if uid not in gids else _free_id(gids)
            if gid not in gids:
                self.add_group(_unique_name(user, f"group{gid}", {g.name for g in self.groups}), gid)
        self.add_user(user, uid, gid, "/", NOLOGIN)
        self.warnings.append(
            f"user {user!r} of the config's User is not defined: "
            f"added with uid {uid} ({origin}) and gid {gid}"
        )


# ----------------------------------------------------------------------------------------------------------
# The pass


def parse_kinds(text: str) -> frozenset[str]:
    """``--inject`` -> the chosen kinds: a comma list of certs, zoneinfo, passwd; or all; or none."""
    names = {n.strip() for n in text.split(",") if n.strip()}
    if names <= {"all"}:
        return frozenset(KINDS) if names else frozenset()
    if names == {"none"}:
        return frozenset()
    unknown = sorted(names - set(KINDS))
    if unknown:
        raise UsageError(
            f"--inject: unknown {', '.join(unknown)} (choose from {', '.join(KINDS)}, all, none)"
        )
    return frozenset(names)


class Inject:
    """Add the CA bundle, zone files and passwd/group entries that a minimal image lacks, and nothing else.

    What, why and what it never touches: see the module docstring. Needs ``certifi`` and ``tzdata``.
    """

    name = "inject"
    summary = "Add the CA certificates, zoneinfo files and passwd/group entries that minimal images lack"
    Options = InjectOptions

    def __init__(self, options: InjectOptions) -> None:
        self.options = options
        self._zones = tzdata_zones()
        self._all_zones, self._extra_zones = parse_zone_choice(options.zones, self._zones)
        self._bundle: bytes | None = None
        self._bundle_source = ""
        if options.certs and options.ca_bundle:
            what = f"--ca-bundle {options.ca_bundle}"
            try:
                with open(options.ca_bundle, "rb") as handle:
                    data = handle.read()
            except OSError as error:
                raise UsageError(f"{what}: {error.strerror or error}") from error
            count = validate_ca_bundle(data, what)
            self._bundle, self._bundle_source = data, f"{count} certificates from {options.ca_bundle}"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        parser.add_argument(
            "--inject",
            dest="inject",
            default="all",
            metavar="LIST",
            help="inject: add when missing: a comma list of certs, zoneinfo, passwd; all (default); none",
        )
        for kind in KINDS:
            parser.add_argument(
                f"--no-inject-{kind}",
                dest=f"inject_no_{kind}",
                action="store_true",
                help=f"inject: never add {kind}",
            )
        parser.add_argument(
            "--ca-bundle",
            dest="inject_ca_bundle",
            default="",
            metavar="FILE",
            help="inject: PEM certificates to add instead of Mozilla's bundle from certifi",
        )
        parser.add_argument(
            "--zoneinfo",
            dest="inject_zoneinfo",
            default="default",
            metavar="default|all|LIST",
            help="inject: zones to add when /usr/share/zoneinfo is missing: default (UTC, Etc/*, the "
            "config's TZ), all, or a comma list of zones added to the default ones",
        )

    @classmethod
    def options_from_args(cls, args: argparse.Namespace) -> InjectOptions:
        kinds = set(parse_kinds(str(getattr(args, "inject", "all"))))
        for kind in KINDS:
            if getattr(args, f"inject_no_{kind}", False):
                kinds.discard(kind)
        options = InjectOptions(
            certs="certs" in kinds,
            zoneinfo="zoneinfo" in kinds,
            passwd="passwd" in kinds,
            ca_bundle=str(getattr(args, "inject_ca_bundle", "") or ""),
            zones=str(getattr(args, "inject_zoneinfo", "default")),
        )
        cls(options)  # a bad zone or --ca-bundle is a usage error now, not a failed pass later
        return options

    def run(self, ctx: PassContext) -> None:
        system = str(ctx.image.config.get("os") or "linux")
        if system != "linux":
            ctx.note("", "kept", f"a {system} image: nothing to inject")
            return
        plan = _Plan(ctx)
        family = distribution_family(self._os_release(ctx.fs))
        env = config_env(ctx.image.config)
        if self.options.certs:
            self._inject_certs(ctx, plan, family, env)
        if self.options.zoneinfo:
            self._inject_zoneinfo(ctx, plan, env)
        if self.options.passwd:
            self._inject_accounts(ctx, plan, family)
        plan.commit()

    @staticmethod
    def _os_release(fs: FileSystem) -> dict[str, str]:
        for path in ("etc/os-release", "usr/lib/os-release"):
            node = fs.lookup(path)
            if node is not None and node.content is not None:
                return parse_os_release(node.content.read_head(_HEAD))
        return {}

    # --- CA certificates

    def _ca_bundle(self) -> tuple[bytes, str]:
        if self._bundle is None:
            with open(certifi.where(), "rb") as handle:
                data = handle.read()
            count = validate_ca_bundle(data, f"certifi {certifi.__version__} bundle {certifi.where()}")
            self._bundle = data
            self._bundle_source = f"Mozilla's {count} certificates from certifi {certifi.__version__}"
        return self._bundle, self._bundle_source

    def _inject_certs(self, ctx: PassContext, plan: _Plan, family: str, env: Mapping[str, str]) -> None:
        present = find_ca_certificates(ctx.fs, env)
        if present is not None:
            ctx.note(present, "kept", "CA certificates present")
            return
        data, source = self._ca_bundle()
        layout = CERT_LAYOUTS[family]
        reason = f"CA certificates: none found; added {source}"
        bundle = plan.file(layout.bundle, data, reason)
        if bundle is None:
            return
        links = dict(layout.links)
        for directory in _OPENSSL_DIRS:
            if ctx.fs.is_directory(directory):
                links.setdefault(f"{directory}/cert.pem", layout.bundle)
        for link in sorted(links):
            if ctx.fs.get(link) is None and link not in plan:
                plan.symlink(link, bundle, f"CA certificates: link to /{bundle}")

    # --- zoneinfo

    def _inject_zoneinfo(self, ctx: PassContext, plan: _Plan, env: Mapping[str, str]) -> None:
        known = set(self._zones)
        tz_zone = zone_from_tz(env.get("TZ", ""))
        if tz_zone and tz_zone not in known:
            if not _is_file(ctx.fs, f"{ZONEINFO_DIR}/{tz_zone}"):
                ctx.warn(
                    f"{ctx.image.name}: config TZ={env['TZ']!r} names no zone known to tzdata "
                    f"{tzdata.IANA_VERSION}; not added"
                )
            tz_zone = ""
        named = sorted({*self._extra_zones, *([tz_zone] if tz_zone else [])})
        if ctx.fs.is_directory(ZONEINFO_DIR):
            wanted = [z for z in named if not _is_file(ctx.fs, f"{ZONEINFO_DIR}/{z}")]
            if not wanted:
                ctx.note(ZONEINFO_DIR, "kept", "zoneinfo present")
                return
            version = tzdata.IANA_VERSION
            reason = f"zoneinfo: {', '.join(wanted)} (tzdata {version}) missing from /{ZONEINFO_DIR}"
            tables: list[str] = []
        elif self._all_zones:
            wanted, tables = list(self._zones), list(_ZONEINFO_TABLES)
            reason = f"zoneinfo: no /{ZONEINFO_DIR}; added every zone of tzdata {tzdata.IANA_VERSION}"
        else:
            wanted = sorted({*default_zones(self._zones), *named})
            tables = []
            shown = ", ".join(
                ["UTC", "Etc/*", *[z for z in named if z != "UTC" and not z.startswith("Etc/")]]
            )
            reason = f"zoneinfo: no /{ZONEINFO_DIR}; added {shown} from tzdata {tzdata.IANA_VERSION}"
        # The history comment joins every addition's reason: the whole story once, then a short one per file.
        short_reason = f"zoneinfo (tzdata {tzdata.IANA_VERSION})"
        paths = sorted([*wanted, *tables])
        for number, name in enumerate(paths):
            data = tzdata_file(name)
            if name not in tables and not data.startswith(b"TZif"):
                raise OptimizerError(f"tzdata {tzdata.IANA_VERSION}: {name}: not a TZif zone file")
            plan.file(f"{ZONEINFO_DIR}/{name}", data, reason if number == 0 else short_reason)

    # --- passwd and group

    def _inject_accounts(self, ctx: PassContext, plan: _Plan, family: str) -> None:
        fs = ctx.fs
        passwd_path, passwd_old, passwd_mode = _table(fs, "etc/passwd")
        group_path, group_old, group_mode = _table(fs, "etc/group")
        accounts = _Accounts(parse_passwd(passwd_old or ""), parse_group(group_old or ""))
        base_users: list[str] = []
        base_groups: list[str] = []
        nogroup = "nogroup" if family in ("debian", "") else "nobody"
        if passwd_old is None:
            shell = "/bin/sh" if _is_file(fs, "bin/sh") else NOLOGIN
            accounts.add_user("root", 0, 0, "/root", shell)
            accounts.add_user("nobody", _NOBODY_ID, _NOBODY_ID, "/nonexistent", NOLOGIN)
            base_users = ["root", "nobody"]
        if group_old is None:
            accounts.add_group("root", 0)
            accounts.add_group(nogroup, _NOBODY_ID)
            base_groups = ["root", nogroup]
        raw_user = config_user(ctx.image.config).strip()
        user, group = split_user(raw_user)
        if user and (not _NAME.match(user) or (group and not _NAME.match(group))):
            ctx.warn(f"{ctx.image.name}: config User {raw_user!r} is not a valid user[:group]; nothing added")
        elif user:
            users_before, groups_before = len(accounts.passwd_lines), len(accounts.group_lines)
            accounts.cover_user(user, group, fs)
            for message in accounts.warnings:
                ctx.warn(f"{ctx.image.name}: {message}")
            if len(accounts.passwd_lines) > users_before:
                base_users.append(f"User {raw_user}")
            if len(accounts.group_lines) > groups_before:
                base_groups.append(f"User {raw_user}")
        for path, old, mode, lines, what, parse in (
            (passwd_path, passwd_old, passwd_mode, accounts.passwd_lines, base_users, parse_passwd),
            (group_path, group_old, group_mode, accounts.group_lines, base_groups, parse_group),
        ):
            if not lines:
                if old is not None:
                    ctx.note(path, "kept", f"/{path} covers every account needed")
                continue
            new = extended(old or "", lines)
            _verify_table(path, old or "", new, len(lines), parse)
            if old is None:
                reason = f"{path.rsplit('/', 1)[-1]}: no /{path}; added {', '.join(what)}"
            else:
                reason = f"{path.rsplit('/', 1)[-1]}: /{path} extended (a copy) for {', '.join(what)}"
            plan.file(path, new.encode("utf-8"), reason, mode=mode)


def _table(fs: FileSystem, path: str) -> tuple[str, str | None, int]:
    """(where it really is, its text or None when missing, its mode) for /etc/passwd or /etc/group."""
    resolved = fs.resolve(path)
    node = None if resolved is None else fs.get(resolved)
    if resolved is None or node is None or node.content is None:
        return path, None, 0o644
    text = node.content.read_bytes().decode("utf-8", "surrogateescape")
    return resolved, text, node.entry.mode & 0o7777


def _verify_table(path: str, old: str, new: str, added: int, parse: Any) -> None:
    """The new file keeps every old byte and each added line parses as one entry."""
    if not new.startswith(old) or len(parse(new)) != len(parse(old)) + added:
        raise OptimizerError(f"/{path}: the extended copy does not parse back ({added} lines added)")

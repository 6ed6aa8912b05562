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

The modules: ``certs`` (what counts as present, what a bundle may hold, where it goes), ``zoneinfo`` (zones from
``tzdata``), ``accounts`` (passwd and group), ``system`` (os-release and the config's Env and User), ``plan``
(placing additions through the image's symlinks).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import certifi
import tzdata

from optimizer.errors import OptimizerError, UsageError
from optimizer.filesystem import FileSystem
from optimizer.pipeline import PassContext
from optimizer.settings import setting

from .accounts import (
    NAME,
    NOBODY_ID,
    NOLOGIN,
    Accounts,
    extended,
    parse_group,
    parse_passwd,
    read_table,
    split_user,
    verify_table,
)
from .certs import (
    CA_BUNDLE_PATHS,
    CA_DIRECTORIES,
    CERT_LAYOUTS,
    HEAD,
    OPENSSL_DIRS,
    find_ca_certificates,
    validate_ca_bundle,
)
from .plan import Plan
from .system import config_env, config_user, distribution_family, parse_os_release
from .zoneinfo import (
    ZONEINFO_DIR,
    ZONEINFO_TABLES,
    default_zones,
    parse_zone_choice,
    tzdata_file,
    tzdata_zones,
    zone_from_tz,
)

__all__ = ["CA_BUNDLE_PATHS", "CA_DIRECTORIES", "Inject", "InjectOptions", "validate_ca_bundle"]


@dataclass(frozen=True)
class InjectOptions:
    certs: bool = setting(True, "never add a CA bundle", flag="--no-inject-certs")
    zoneinfo: bool = setting(True, "never add zone files", flag="--no-inject-zoneinfo")
    passwd: bool = setting(True, "never add /etc/passwd and /etc/group entries", flag="--no-inject-passwd")
    ca_bundle: str = setting(
        "",
        "PEM certificates to add instead of Mozilla's bundle from certifi",
        flag="--ca-bundle",
        metavar="FILE",
    )
    zones: str = setting(
        "default",
        "zones to add when /usr/share/zoneinfo is missing: default (UTC, Etc/*, the config's TZ), all, "
        "or a comma list of zones added to the default ones",
        flag="--zoneinfo",
        metavar="default|all|LIST",
    )


class Inject:
    """Add the CA bundle, zone files and passwd/group entries that a minimal image lacks, and nothing else.

    What, why and what it never touches: see the module docstring. Needs ``certifi`` and ``tzdata``.
    """

    name = "inject"
    flag_prefix = "inject"
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

    def run(self, ctx: PassContext) -> None:
        system = str(ctx.image.config.get("os") or "linux")
        if system != "linux":
            ctx.note("", "kept", f"a {system} image: nothing to inject")
            return
        plan = Plan(ctx)
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
                return parse_os_release(node.content.read_head(HEAD))
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

    def _inject_certs(self, ctx: PassContext, plan: Plan, family: str, env: Mapping[str, str]) -> None:
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
        for directory in OPENSSL_DIRS:
            if ctx.fs.is_directory(directory):
                links.setdefault(f"{directory}/cert.pem", layout.bundle)
        for link in sorted(links):
            if ctx.fs.get(link) is None and link not in plan:
                plan.symlink(link, bundle, f"CA certificates: link to /{bundle}")

    # --- zoneinfo

    def _inject_zoneinfo(self, ctx: PassContext, plan: Plan, env: Mapping[str, str]) -> None:
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
            wanted, tables = list(self._zones), list(ZONEINFO_TABLES)
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

    def _inject_accounts(self, ctx: PassContext, plan: Plan, family: str) -> None:
        fs = ctx.fs
        passwd_path, passwd_old, passwd_mode = read_table(fs, "etc/passwd")
        group_path, group_old, group_mode = read_table(fs, "etc/group")
        accounts = Accounts(parse_passwd(passwd_old or ""), parse_group(group_old or ""))
        base_users: list[str] = []
        base_groups: list[str] = []
        nogroup = "nogroup" if family in ("debian", "") else "nobody"
        if passwd_old is None:
            shell = "/bin/sh" if _is_file(fs, "bin/sh") else NOLOGIN
            accounts.add_user("root", 0, 0, "/root", shell)
            accounts.add_user("nobody", NOBODY_ID, NOBODY_ID, "/nonexistent", NOLOGIN)
            base_users = ["root", "nobody"]
        if group_old is None:
            accounts.add_group("root", 0)
            accounts.add_group(nogroup, NOBODY_ID)
            base_groups = ["root", nogroup]
        raw_user = config_user(ctx.image.config).strip()
        user, group = split_user(raw_user)
        if user and (not NAME.match(user) or (group and not NAME.match(group))):
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
            verify_table(path, old or "", new, len(lines), parse)
            if old is None:
                reason = f"{path.rsplit('/', 1)[-1]}: no /{path}; added {', '.join(what)}"
            else:
                reason = f"{path.rsplit('/', 1)[-1]}: /{path} extended (a copy) for {', '.join(what)}"
            plan.file(path, new.encode("utf-8"), reason, mode=mode)


def _is_file(fs: FileSystem, path: str) -> bool:
    node = fs.lookup(path)
    return node is not None and node.content is not None

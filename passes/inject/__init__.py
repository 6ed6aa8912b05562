"""Pass ``inject``: add the CA certificates, zone files and passwd/group entries an image needs and lacks.

Images built ``FROM scratch``, on distroless bases or around one static binary often fail at run time with
``x509: certificate signed by unknown authority``, show every time in UTC whatever ``TZ`` says, or cannot
name their users (``id``, ``ls -l``, or a runtime refusing ``User: app``). This pass looks at the final
filesystem (whiteouts applied, earlier passes' changes included) and at the image config, and adds what is
missing and needed, in the one new top layer the core writes (root-owned, fixed mtimes, sorted), with a
history entry built from the reasons given here.

Needed means evidence (``evidence``): something in the image does TLS, loads zones or looks users up, or the
config asks for it (``TZ``, ``User``); the first such thing is named in the report ("certs: /usr/sbin/nginx
links libssl.so.3") and each addition's ``need`` says it in short for the summary. Where nothing needs a kind,
nothing is added and the report says what was looked at; ``--inject-unneeded`` adds what is missing anyway.

- CA certificates: when no PEM bundle or certificate directory exists at any path that Debian/Ubuntu, Alpine,
  RHEL/Fedora, SUSE, Go's ``crypto/x509``, OpenSSL (and so Python's ``ssl``) read, and ``SSL_CERT_FILE`` /
  ``SSL_CERT_DIR`` in the config do not name one, Mozilla's bundle from ``certifi`` (or ``--ca-bundle FILE``,
  validated as PEM certificates and nothing else) is added where the distribution named by ``/etc/os-release``
  expects it, plus the ``cert.pem`` links that distribution ships. Scratch and unknown images get the Debian
  path and an ``/etc/ssl/cert.pem`` link.
- Zoneinfo: when ``/usr/share/zoneinfo`` is missing, zone files from the ``tzdata`` package: the zone a ``TZ``
  variable in the config or a dangling ``/etc/localtime`` names; where a program loads zones by name, also
  ``UTC`` and ``Etc/*``; and whatever ``--zoneinfo`` asks for (``all`` or a list, added to the default ones).
  When the directory exists, only zones named by ``TZ``, ``/etc/localtime`` or ``--zoneinfo`` that it lacks
  are added.
- passwd/group: a missing ``/etc/passwd`` or ``/etc/group`` gets ``root`` and ``nobody``/``nogroup`` when the
  config has a ``User`` or a program looks users up; a ``User`` that no entry covers gets one (home ``/``,
  shell ``/sbin/nologin``). A numeric user keeps the primary group the runtime gives it today (the group in
  ``User``, else 0), so injecting never changes which files the process can reach. A named user or group that
  the image does not define gets an id chosen here (from ``/home/NAME`` when that exists), with a warning. An
  existing file is extended only through a full copy in the new layer; the lower layer's bytes are never
  touched, and a file a package manager lists is not extended (``passes.packages``).

It never changes or deletes an existing file, never adds anything an image already has, and writes through
symlinked directories (``/etc/ssl/certs -> ...``) to where they lead. It needs ``certifi`` and ``tzdata``
(both runtime dependencies) and nothing outside Python.

The modules: ``evidence`` (what needs each kind), ``programs`` (what an ELF file links and contains),
``certs`` (what counts as present, what a bundle may hold, where it goes), ``zoneinfo`` (zones from
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
from passes import packages

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
from .evidence import CERTS, NAMES, ZONES, Evidence, find_evidence, localtime_zone
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
        "PEM certificates to add instead of Mozilla's bundle from certifi (where certificates are missing and "
        "needed)",
        flag="--ca-bundle",
        metavar="FILE",
    )
    needed_only: bool = setting(
        True,
        "add what is missing even where nothing in the image needs it (no program doing TLS, loading zones "
        "or looking users up; the behaviour before evidence was required)",
        flag="--inject-unneeded",
    )
    zones: str = setting(
        "default",
        "zones to add when /usr/share/zoneinfo is missing: default (UTC, Etc/*, the config's TZ), all, "
        "or a comma list of zones added to the default ones",
        flag="--zoneinfo",
        metavar="default|all|LIST",
    )


class Inject:
    """Add the CA bundle, zone files and passwd/group entries that an image needs and lacks, and nothing else.

    What, why and what it never touches: see the module docstring. Needs ``certifi`` and ``tzdata``.
    """

    name = "inject"
    flag_prefix = "inject"
    summary = "Add the CA certificates, zoneinfo files and passwd/group entries an image needs and lacks"
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
        certs = find_ca_certificates(ctx.fs, env) if self.options.certs else None
        evidence = self._evidence(ctx, env, certs)
        if self.options.certs:
            self._inject_certs(ctx, plan, family, certs, evidence)
        if self.options.zoneinfo:
            self._inject_zoneinfo(ctx, plan, env, evidence)
        if self.options.passwd:
            self._inject_accounts(ctx, plan, family, evidence)
        plan.commit()

    def _evidence(self, ctx: PassContext, env: Mapping[str, str], certs: str | None) -> Evidence:
        """Look for what needs the kinds that are missing (only those: the search reads files)."""
        if not self.options.needed_only:
            return Evidence()
        fs = ctx.fs
        wanted = []
        if self.options.certs and certs is None:
            wanted.append(CERTS)
        if self.options.zoneinfo and not fs.is_directory(ZONEINFO_DIR) and not self._explicit_zones:
            wanted.append(ZONES)
        accounts_missing = read_table(fs, "etc/passwd")[1] is None or read_table(fs, "etc/group")[1] is None
        if self.options.passwd and accounts_missing and not config_user(ctx.image.config).strip():
            wanted.append(NAMES)
        return find_evidence(fs, wanted)

    @staticmethod
    def _os_release(fs: FileSystem) -> dict[str, str]:
        for path in ("etc/os-release", "usr/lib/os-release"):
            node = fs.lookup(path)
            if node is not None and node.content is not None:
                return parse_os_release(node.content.read_head(HEAD))
        return {}

    @property
    def _explicit_zones(self) -> bool:
        """``--zoneinfo all`` or a list: zones asked for by name are added without other evidence."""
        return self._all_zones or bool(self._extra_zones)

    # --- CA certificates

    def _ca_bundle(self) -> tuple[bytes, str]:
        if self._bundle is None:
            with open(certifi.where(), "rb") as handle:
                data = handle.read()
            count = validate_ca_bundle(data, f"certifi {certifi.__version__} bundle {certifi.where()}")
            self._bundle = data
            self._bundle_source = f"Mozilla's {count} certificates from certifi {certifi.__version__}"
        return self._bundle, self._bundle_source

    def _inject_certs(
        self, ctx: PassContext, plan: Plan, family: str, present: str | None, evidence: Evidence
    ) -> None:
        if present is not None:
            ctx.note(present, "kept", "CA certificates present")
            return
        need = evidence.needs.get(CERTS)
        for note in evidence.notes:
            if "will fail" in note:
                ctx.warn(f"{ctx.image.name}: {note}")
        if need is None and self.options.needed_only:
            notes = "".join(f"; {note}" for note in evidence.notes)
            ctx.note(
                "",
                "kept",
                "CA certificates: none, and nothing needs them: no program links a TLS library or reads the "
                f"system's roots ({evidence.looked()}){notes}; not added",
                what=CERTS,
            )
            return
        data, source = self._ca_bundle()
        layout = CERT_LAYOUTS[family]
        why = need.text() if need is not None else "--inject-unneeded"
        reason = f"CA certificates: none found; {why}; added {source}"
        short = (
            f"certs needed by /{need.path}" if need is not None and need.path else "certs (--inject-unneeded)"
        )
        bundle = plan.file(layout.bundle, data, reason, short)
        if bundle is None:
            return
        links = dict(layout.links)
        for directory in OPENSSL_DIRS:
            if ctx.fs.is_directory(directory):
                links.setdefault(f"{directory}/cert.pem", layout.bundle)
        for link in sorted(links):
            if ctx.fs.get(link) is None and link not in plan:
                plan.symlink(link, bundle, f"CA certificates: link to /{bundle}", short)

    # --- zoneinfo

    def _inject_zoneinfo(
        self, ctx: PassContext, plan: Plan, env: Mapping[str, str], evidence: Evidence
    ) -> None:
        known = set(self._zones)
        tz_zone = zone_from_tz(env.get("TZ", ""))
        if tz_zone and tz_zone not in known:
            if not _is_file(ctx.fs, f"{ZONEINFO_DIR}/{tz_zone}"):
                ctx.warn(
                    f"{ctx.image.name}: config TZ={env['TZ']!r} names no zone known to tzdata "
                    f"{tzdata.IANA_VERSION}; not added"
                )
            tz_zone = ""
        local_zone = localtime_zone(ctx.fs)
        local_zone = local_zone if local_zone in known else ""
        # Each source: (what the report says, what the summary says), the strongest first.
        sources: list[tuple[str, str]] = []
        need = evidence.needs.get(ZONES)
        program = need is not None and need.path != "etc/localtime"
        if need is not None and program:
            sources.append((need.text(), f"/{need.path}"))
        if tz_zone:
            sources.append((f"the config's TZ={env['TZ']}", f"the config's TZ={env['TZ']}"))
        if local_zone:
            sources.append((f"/etc/localtime points to {local_zone}", "/etc/localtime"))
        if self._explicit_zones:
            sources.append((f"--zoneinfo {self.options.zones}", f"--zoneinfo {self.options.zones}"))
        named = sorted({*self._extra_zones, *(z for z in (tz_zone, local_zone) if z)})
        version = tzdata.IANA_VERSION
        tables: list[str] = []
        if ctx.fs.is_directory(ZONEINFO_DIR):
            wanted = [z for z in named if not _is_file(ctx.fs, f"{ZONEINFO_DIR}/{z}")]
            if not wanted:
                ctx.note(ZONEINFO_DIR, "kept", "zoneinfo present")
                return
            story = f"{', '.join(wanted)} (tzdata {version}) missing from /{ZONEINFO_DIR}"
        elif self._all_zones:
            wanted, tables = list(self._zones), list(ZONEINFO_TABLES)
            story = f"no /{ZONEINFO_DIR}; added every zone of tzdata {version}"
        elif program or self._extra_zones or not self.options.needed_only:
            # A program that loads zones by name may ask for any: the default set, and every zone named.
            wanted = sorted({*default_zones(self._zones), *named})
            shown = ["UTC", "Etc/*", *[z for z in named if z != "UTC" and not z.startswith("Etc/")]]
            story = f"no /{ZONEINFO_DIR}; added {', '.join(shown)} from tzdata {version}"
            if not sources:
                sources.append(("--inject-unneeded", "--inject-unneeded"))
        elif named:
            wanted = named  # only what the config or /etc/localtime names
            story = f"no /{ZONEINFO_DIR}; added {', '.join(named)} from tzdata {version}"
        else:
            ctx.note(
                ZONEINFO_DIR,
                "kept",
                f"zoneinfo: no /{ZONEINFO_DIR}, and nothing needs it: no TZ in the config, no program that "
                f"loads zones by name ({evidence.looked()}); not added",
                what=ZONES,
            )
            return
        reason = f"zoneinfo: {story}; {'; '.join(text for text, _ in sources)}"
        short = f"zoneinfo needed by {sources[0][1]}"
        # The history comment joins every addition's reason: the whole story once, then a short one per file.
        short_reason = f"zoneinfo (tzdata {version})"
        for number, name in enumerate(sorted([*wanted, *tables])):
            data = tzdata_file(name)
            if name not in tables and not data.startswith(b"TZif"):
                raise OptimizerError(f"tzdata {version}: {name}: not a TZif zone file")
            plan.file(f"{ZONEINFO_DIR}/{name}", data, reason if number == 0 else short_reason, short)

    # --- passwd and group

    def _inject_accounts(self, ctx: PassContext, plan: Plan, family: str, evidence: Evidence) -> None:
        fs = ctx.fs
        passwd_path, passwd_old, passwd_mode = read_table(fs, "etc/passwd")
        group_path, group_old, group_mode = read_table(fs, "etc/group")
        accounts = Accounts(parse_passwd(passwd_old or ""), parse_group(group_old or ""))
        base_users: list[str] = []
        base_groups: list[str] = []
        nogroup = "nogroup" if family in ("debian", "") else "nobody"
        raw_user = config_user(ctx.image.config).strip()
        need = evidence.needs.get(NAMES)
        if raw_user:
            short = f"passwd needed by the config's User {raw_user}"
        elif need is not None:
            short = f"passwd needed by /{need.path}"
        else:
            short = "passwd (--inject-unneeded)"
        wanted = bool(raw_user) or need is not None or not self.options.needed_only
        if not wanted and (passwd_old is None or group_old is None):
            missing = " and ".join(
                f"/{p}" for p, old in ((passwd_path, passwd_old), (group_path, group_old)) if old is None
            )
            ctx.note(
                "etc/passwd",
                "kept",
                f"passwd: no {missing}, and nothing needs names: no User in the config, no program that looks "
                f"users up ({evidence.looked()}); not added",
                what=NAMES,
            )
            return
        cause = f"User {raw_user}" if raw_user else need.text() if need is not None else "--inject-unneeded"
        if passwd_old is None:
            shell = "/bin/sh" if _is_file(fs, "bin/sh") else NOLOGIN
            accounts.add_user("root", 0, 0, "/root", shell)
            accounts.add_user("nobody", NOBODY_ID, NOBODY_ID, "/nonexistent", NOLOGIN)
            base_users = ["root", "nobody"]
        if group_old is None:
            accounts.add_group("root", 0)
            accounts.add_group(nogroup, NOBODY_ID)
            base_groups = ["root", nogroup]
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
            if old is not None and (packaged := packages.kept_reason(ctx, path)):
                ctx.warn(f"{ctx.image.name}: /{path} not extended for {', '.join(what)}: {packaged}")
                ctx.note(path, "kept", f"not extended for {', '.join(what)}: {packaged}")
                continue
            new = extended(old or "", lines)
            verify_table(path, old or "", new, len(lines), parse)
            name = path.rsplit("/", 1)[-1]
            if old is None:
                reason = f"{name}: no /{path}; {cause}; added {', '.join(what)}"
            else:
                reason = f"{name}: /{path} extended (a copy) for {', '.join(what)}"
            plan.file(path, new.encode("utf-8"), reason, short, mode=mode)


def _is_file(fs: FileSystem, path: str) -> bool:
    node = fs.lookup(path)
    return node is not None and node.content is not None

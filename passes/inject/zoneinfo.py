"""Zone files from the ``tzdata`` package: which zones exist, which a ``TZ`` value or ``--zoneinfo`` names."""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterable, Sequence

import tzdata

from optimizer.errors import UsageError

__all__ = [
    "ZONEINFO_DIR",
    "ZONEINFO_TABLES",
    "default_zones",
    "parse_zone_choice",
    "tzdata_file",
    "tzdata_zones",
    "zone_from_tz",
]

ZONEINFO_DIR = "usr/share/zoneinfo"
# Tables and data files that ship beside the zone files; added with ``--zoneinfo all``.
ZONEINFO_TABLES: tuple[str, ...] = (
    "iso3166.tab",
    "leapseconds",
    "tzdata.zi",
    "zone.tab",
    "zone1970.tab",
    "zonenow.tab",
)


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

"""What an image says about itself: its distribution family (``/etc/os-release``) and its config's Env and User."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["config_env", "config_user", "distribution_family", "parse_os_release"]


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

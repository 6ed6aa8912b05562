"""The web servers an image carries, and where they send precompressed files (``FILE.gz`` for ``FILE``).

A server that sends ``FILE.br``/``FILE.gz``/``FILE.zst`` in place of ``FILE`` when the client accepts it serves
those files on purpose: deleting them does not break anything, but every asset then goes out uncompressed
(a 22.8 KB brotli stylesheet becomes 232 KB on the wire). ``served`` reads the image's own configuration and
application files, one ``Rule`` per server (the table ``RULES`` below says what each detects and why), and
answers, for a path and a suffix, whether some server sends it and from which root.

Roots are resolved in the image's filesystem (symlinks followed inside the image, and the symlinks below a
root too). When a server that can send precompressed files is there but its root cannot be told (a variable,
a relative path, a call we cannot read), every file with the suffixes it serves is kept, and the report says
why: keeping a twin costs its bytes once, deleting one that is served costs them on every request.

``web_roots`` (module ``roots``) answers a wider question with the same parsers: which directories do the
image's servers send files from at all (their document roots), for ``passes.media``.

It only reads files; ``passes.compressed_duplicates`` decides what to delete, ``passes.media`` what to reduce.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from optimizer.filesystem import FileSystem

from . import apache, caddy, h2o, lighttpd, nginx, node
from .files import Symlinks, real_prefixes, under
from .roots import WebRoots, web_roots
from .serving import DocumentRoot, Serving

__all__ = ["RULES", "DocumentRoot", "Rule", "Served", "Serving", "WebRoots", "served", "web_roots"]


@dataclass(frozen=True)
class Rule:
    """One server: what in the image shows it, how it sends precompressed files, and the function that finds
    where (``find(fs, image_config)``)."""

    server: str
    detects: str
    why: str
    find: Callable[[FileSystem, Mapping[str, Any]], list[Serving]]


RULES: tuple[Rule, ...] = (
    Rule(
        "nginx",
        "nginx.conf (and what it includes) under /etc/nginx, /usr/local/nginx/conf, OpenResty's or Bitnami's",
        "gzip_static on (ngx_http_gzip_static_module) sends FILE.gz, brotli_static on (ngx_brotli) FILE.br, "
        "from the root or alias of the http, server or location context that turns it on",
        nginx.find,
    ),
    Rule(
        "Apache httpd",
        "apache2.conf or httpd.conf (and Include/IncludeOptional), and the .htaccess files of an image that has one",
        "a RewriteRule whose substitution ends in .gz/.br/.zst (the precompressed recipe of the mod_deflate "
        "documentation) sends FILE.gz for FILE under its <Directory>, .htaccess directory or DocumentRoot",
        apache.find,
    ),
    Rule(
        "Caddy",
        "/etc/caddy/Caddyfile (and import), Caddy JSON configs (/etc/caddy/*.json, /config/caddy/autosave.json)",
        "file_server { precompressed br zstd gzip } sends FILE.br/FILE.zst/FILE.gz from the site's root",
        caddy.find,
    ),
    Rule(
        "h2o",
        "/etc/h2o/h2o.conf (YAML)",
        "file.send-compressed: ON sends FILE.br and FILE.gz (file.send-gzip: ON, before h2o 2.1: FILE.gz) "
        "from the file.dir of every path it applies to",
        h2o.find,
    ),
    Rule(
        "lighttpd",
        "/etc/lighttpd/lighttpd.conf (and include), and the mod_magnet Lua scripts it attracts",
        "lighttpd compresses on the fly (mod_deflate) but sends FILE.gz/FILE.br itself only through a "
        "mod_magnet script that looks for them: such a script's server.document-root is served",
        lighttpd.find,
    ),
    *(
        Rule(
            package.name,
            f"node_modules/{package.name}/package.json, and its calls in the application's own sources",
            package.why,
            package.find,
        )
        for package in node.PACKAGES
    ),
)


@dataclass
class Served:
    """Where the image's servers send precompressed files: real path prefixes per suffix, and the suffixes
    kept everywhere because a server sends them from a root that cannot be told."""

    servings: list[Serving] = field(default_factory=list)
    prefixes: dict[str, list[tuple[str, Serving]]] = field(default_factory=dict)
    everywhere: dict[str, Serving] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def keeps(self, path: str, suffix: str) -> str | None:
        """The reason to keep ``path`` (a file with ``suffix``), or None when no server sends it."""
        suffix = suffix.lower()
        for prefix, serving in self.prefixes.get(suffix, ()):
            if under(path, prefix):
                shown = f"/{serving.root}" + (f" (/{prefix})" if prefix != serving.root else "")
                return f"served by {serving.server} ({serving.how}) from {shown}"
        unknown = self.everywhere.get(suffix)
        if unknown is not None:
            return f"{unknown.server} {unknown.how} is on and its root cannot be told ({unknown.why})"
        return None


def served(fs: FileSystem, config: Mapping[str, Any] | None = None, rules: Sequence[Rule] = RULES) -> Served:
    """Run every rule on the image; the roots resolved in its filesystem."""
    result = Served()
    links = Symlinks(fs)
    for rule in rules:
        result.servings += rule.find(fs, config or {})
    for serving in result.servings:
        if serving.root is None:
            for suffix in sorted(serving.suffixes):
                result.everywhere.setdefault(suffix, serving)
            result.notes.append(
                f"{serving.server}: {serving.source}: {serving.how} with a root that cannot be told "
                f"({serving.why}): every {'/'.join(sorted(serving.suffixes))} twin is kept"
            )
            continue
        prefixes = real_prefixes(fs, serving.root, links)
        for suffix in sorted(serving.suffixes):
            result.prefixes.setdefault(suffix, []).extend((p, serving) for p in prefixes)
    for entries in result.prefixes.values():
        entries.sort(key=lambda item: (item[0], item[1].server))
    return result

"""Server configurations that include each other (issue 12): what ``served`` and ``web_roots`` cost on them.

For nginx, Apache httpd, lighttpd and Caddy, an image whose main file includes the N files of a conf.d that
each include every file of it (``tests/passes/servers/helpers.py``): a cycle check on the chain of includes
alone reads them about N! times. For h2o, N files that each include the next one twice (no cycle, 2**N reads),
and ("h2o alias") one file whose YAML aliases double the paths at each of N levels (2**N paths to walk).
Each ``served`` (the ``find`` of every rule, what compressed-duplicates runs) and ``web_roots`` (what
``--media-reduce web`` runs) is timed once per server and N, and stopped after ``--timeout`` seconds.
``--tree DIR`` imports ``optimizer`` and ``passes`` from DIR instead (``git archive <commit> optimizer passes |
tar x -C DIR``), for before/after. The load average is printed before and after.

``--htaccess 20000`` (0: not run) adds an image with httpd and that many ``.htaccess`` files of
``--htaccess-bytes`` each (the recipe of the mod_deflate documentation, padded with comments), spread over
directories of 100: what ``served`` and ``web_roots`` cost on it, and what ``served`` says of its twins.

Usage: python bench/bench_server_includes.py [--files 5,6,7,10] [--timeout 20] [--tree DIR]
                                             [--htaccess 20000] [--htaccess-bytes 512]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _timed(call: Callable[[Any, Any], Any], fs: Any, timeout: float) -> str:
    from tests.passes.servers.helpers import Late, deadline

    start = time.perf_counter()
    try:
        with deadline(timeout):
            call(fs, {})
    except Late:
        return f"> {timeout:.0f} s"
    return f"{time.perf_counter() - start:.3f} s"


_RECIPE = (
    'RewriteEngine On\nRewriteCond "%{HTTP:Accept-encoding}" "gzip"\nRewriteCond "%{REQUEST_FILENAME}\\.gz" -s\n'
    'RewriteRule "^(.*)\\.(css|js)" "$1\\.$2\\.gz" [QSA]\n'
)


def htaccess_image(count: int, size: int) -> dict[str, bytes]:
    """httpd, and ``count`` ``.htaccess`` files of ``size`` bytes (the recipe, then comments), 100 a directory."""
    text = (_RECIPE + "#" * max(0, size - len(_RECIPE) - 1) + "\n").encode()
    files = {"usr/local/apache2/conf/httpd.conf": b"DocumentRoot /usr/local/apache2/htdocs\n"}
    for n in range(count):
        files[f"srv/www/d{n // 100:04}/s{n % 100:02}/.htaccess"] = text
    files["srv/www/d0000/s00/app.js.gz"] = b"z"
    return files


def _htaccess(count: int, size: int, timeout: float) -> None:
    from passes.servers import served, web_roots
    from tests.passes import kit

    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        fs = kit.make_filesystem(Path(scratch), [htaccess_image(count, size)], parents=True)
        built = time.perf_counter() - start
        found = _timed(served, fs, timeout)
        roots = _timed(web_roots, fs, timeout)
        reason = served(fs, {}).keeps("srv/www/d0000/s00/app.js.gz", ".gz")
    print(f"apache .htaccess: {count} files of {size} B (filesystem built in {built:.1f} s)")
    print(f"  served {found}, web_roots {roots}; srv/www/d0000/s00/app.js.gz: {reason}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", default="5,6,7,10")
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--tree", type=Path, default=ROOT)
    parser.add_argument("--htaccess", type=int, default=0, metavar="N")
    parser.add_argument("--htaccess-bytes", type=int, default=512, metavar="BYTES")
    args = parser.parse_args()
    sys.path[:0] = [str(args.tree), str(ROOT)]  # optimizer and passes from the tree, tests from here
    from passes.servers import served, web_roots
    from tests.passes import kit
    from tests.passes.servers.helpers import h2o_aliases, h2o_including_twice, including_each_other

    build = {"h2o": h2o_including_twice, "h2o alias": h2o_aliases}

    print(f"tree {args.tree}; load average before: {os.getloadavg()}")
    print(f"{'server':<10} {'files':>5} {'served':>10} {'web_roots':>10}")
    for server in ("nginx", "apache", "lighttpd", "caddy", "h2o", "h2o alias"):
        for count in (int(n) for n in args.files.split(",") if n):
            files = build[server](count) if server in build else including_each_other(server, count)
            with tempfile.TemporaryDirectory() as scratch:
                fs = kit.make_filesystem(Path(scratch), [files], parents=True)
                found = _timed(served, fs, args.timeout)
                roots = _timed(web_roots, fs, args.timeout)
            print(f"{server:<10} {count:>5} {found:>10} {roots:>10}", flush=True)
    if args.htaccess:
        _htaccess(args.htaccess, args.htaccess_bytes, args.timeout)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()

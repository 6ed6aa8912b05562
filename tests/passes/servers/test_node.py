"""``passes.servers.node``: middleware packages found in node_modules, roots read from the app's calls."""

from __future__ import annotations

from pathlib import Path

import pytest

from passes.servers.node import evaluate_root
from tests.passes.servers.helpers import kept, served_by

PACKAGE = b'{"name": "x", "version": "1.0.0"}'


@pytest.mark.parametrize(
    "expression, root",
    [
        ('"public"', "work/public"),
        ("'/srv/static'", "srv/static"),
        ('path.join(__dirname, "public", "assets")', "app/src/public/assets"),
        ("path.resolve(__dirname, '..', 'dist')", "app/dist"),
        ("join(process.cwd(), 'static')", "work/static"),
        ('__dirname + "/public"', "app/src/public"),
        ("`${__dirname}/public`", "app/src/public"),
        ('fileURLToPath(new URL("./public", import.meta.url))', "app/src/public"),
        ("process.env.ROOT", None),
        ("path.join(base, 'x')", None),
    ],
)
def test_root_expressions(expression: str, root: str | None) -> None:
    assert evaluate_root(expression, "app/src", "work") == root


def test_express_static_gzip_root_from_the_call(tmp_path: Path) -> None:
    server = b"""
const express = require("express");
const path = require("path");
const expressStaticGzip = require('express-static-gzip');
const app = express();
app.use("/", expressStaticGzip(path.join(__dirname, "public"), { enableBrotli: true }));
"""
    files = {
        "app/node_modules/express-static-gzip/package.json": PACKAGE,
        "app/node_modules/express-static-gzip/index.js": b"module.exports = function expressStaticGzip() {}",
        "app/server.js": server,
    }
    result = served_by(tmp_path, files)
    assert kept(result, "app/public/a.js.br", "app/public/a.js.gz", "app/data/a.txt.gz") == {
        "app/public/a.js.br": "served by express-static-gzip (called in /app/server.js) from /app/public",
        "app/public/a.js.gz": "served by express-static-gzip (called in /app/server.js) from /app/public",
        "app/data/a.txt.gz": None,
    }


def test_fastify_needs_precompressed_and_sirv_needs_its_options(tmp_path: Path) -> None:
    server = b"""
import fastifyStatic from '@fastify/static'
import sirv from "sirv"
fastify.register(fastifyStatic, { root: '/srv/a', preCompressed: true })
fastify.register(fastifyStatic, { root: '/srv/b' })
app.use(sirv('/srv/c', { dev: false }))
app.use(sirv('/srv/d', { brotli: true }))
"""
    files = {
        "app/node_modules/@fastify/static/package.json": PACKAGE,
        "app/node_modules/sirv/package.json": PACKAGE,
        "app/index.mjs": server,
    }
    result = served_by(tmp_path, files)
    assert [
        p for p in ("srv/a/x.gz", "srv/b/x.gz", "srv/c/x.gz", "srv/d/x.gz") if result.keeps(p, ".gz")
    ] == [
        "srv/a/x.gz",
        "srv/d/x.gz",
    ]


def test_installed_without_a_readable_call_keeps_everything(tmp_path: Path) -> None:
    files = {
        "app/node_modules/koa-static/package.json": PACKAGE,
        "app/dist/server.js": b"const s=require('koa-static');app.use(s(process.env.STATIC_DIR))",
        "srv/node_modules/connect-gzip-static/package.json": PACKAGE,
    }
    result = served_by(tmp_path, files)
    assert sorted(s.why for s in result.servings) == [
        "no call of connect-gzip-static found in the sources of /srv",
        "root 'process.env.STATIC_DIR'",
    ]
    assert set(result.everywhere) == {".br", ".gz"}

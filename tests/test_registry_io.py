"""``docker://`` inputs and outputs of ``optimize`` (library and CLI), against a real registry: blobs read only
when a pass needs them, pushed straight from the run, mounted where the destination registry has them."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from optimizer.api import optimize
from optimizer.errors import UsageError
from optimizer.options import Options
from optimizer.registry import Credentials, Reference, RegistryAccess, is_registry_ref, parse_registry_ref
from optimizer.registry.access import add_arguments, from_args
from tests.conftest import ROOT
from tests.registry_fixtures import (
    FaultProxy,
    RunningRegistry,
    push_layout,
    registry,
    registry_factory,
    skopeo_copy,
    skopeo_inspect_raw,
)

__all__ = ["registry", "registry_factory"]  # fixtures imported for pytest


def test_registry_refs_are_recognised() -> None:
    assert is_registry_ref("docker://127.0.0.1:5000/a/b:v1")
    assert not is_registry_ref("image.tar")
    assert not is_registry_ref("./docker:/x")
    assert not is_registry_ref("oci:dir")
    assert parse_registry_ref("docker://127.0.0.1:5000/a/b:v1") == Reference("127.0.0.1:5000", "a/b", "v1")
    assert parse_registry_ref("docker://busybox") == Reference("docker.io", "library/busybox")
    with pytest.raises(UsageError):
        parse_registry_ref("image.tar")
    with pytest.raises(UsageError):
        parse_registry_ref("docker://Host:5000/UPPER")


def test_command_line_flags() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--src-tls-verify=false",
            "--insecure-registry",
            "a:5000",
            "--insecure-registry",
            "b:5000",
            "--dest-creds",
            "bob:pa:ss",
            "--registry-timeout",
            "5",
            "--registry-retries",
            "1",
        ]
    )
    options = from_args(args)
    assert options == RegistryAccess(
        src_insecure=True,
        dest_insecure=False,
        insecure_registries=frozenset({"a:5000", "b:5000"}),
        src_credentials=None,
        dest_credentials=Credentials("bob", "pa:ss"),
        timeout=5.0,
        retries=1,
    )
    assert options.insecure_for("a:5000", source=False) and not options.insecure_for("c:1", source=False)
    assert options.insecure_for("c:1", source=True)
    assert "pa:ss" not in repr(options)
    defaults = from_args(parser.parse_args([]))
    assert defaults == RegistryAccess()
    with pytest.raises(SystemExit):
        parser.parse_args(["--dest-tls-verify=maybe"])


INSECURE = RegistryAccess(src_insecure=True, dest_insecure=True)


def test_registry_to_registry_from_python_moves_no_layer(
    registry: RunningRegistry, fixtures: Path, tmp_path: Path
) -> None:
    """``optimize("docker://...", "docker://...")`` from Python: a pure repack reads no layer, uploads none
    (every blob is mounted from the source repository) and pushes the same manifests."""
    source = push_layout(
        fixtures / "images" / "stereoscope" / "oci-layout-multiplatform", registry, "tr/multi:v1"
    )
    raw = skopeo_inspect_raw(source)
    with FaultProxy(registry.host) as proxy:
        report = optimize(
            f"docker://{proxy.host}/tr/multi:v1",
            f"docker://{proxy.host}/tr/multi-copy:v1",
            Options(passes=(), registry=INSECURE, workdir=str(tmp_path)),
        )
        layer_gets = [r for r in proxy.requests if r.method == "GET" and "/blobs/" in r.path]
        uploads = proxy.count("PUT", "/blobs/uploads/")
        mounts = proxy.count("POST", "mount=", status=201)
    assert uploads == 0 and mounts > 0
    assert len(layer_gets) == len(report.images)  # one config per image, no layer
    assert report.pushed_digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert skopeo_inspect_raw(f"docker://{registry.host}/tr/multi-copy:v1") == raw
    assert list(tmp_path.iterdir()) == []  # the work directory is gone


def test_docker_archive_image_optimized_and_pushed_to_another_repository(
    registry: RunningRegistry, fixtures: Path, tmp_path: Path
) -> None:
    """A docker-save image in the registry, optimized with the default passes and pushed to another
    repository: exactly the blobs the optimizer wrote anew are uploaded; the ones it kept are mounted."""
    skopeo_copy(
        f"docker-archive:{fixtures / 'images' / 'dive' / 'test-docker-image.tar'}",
        f"docker://{registry.host}/tr/dive:v1",
    )
    with FaultProxy(registry.host) as proxy:
        report = optimize(
            f"docker://{proxy.host}/tr/dive:v1",
            f"docker://{proxy.host}/tr/dive-opt:v1",
            Options(registry=INSECURE),
        )
        uploads = [r.path for r in proxy.requests if r.method == "PUT" and "/blobs/uploads/" in r.path]
        mounts = proxy.count("POST", "mount=", status=201)
    (image,) = report.images
    rewritten = {layer.digest_after for layer in image.layers if layer.status in ("rewritten", "added")}
    kept = {layer.digest_after for layer in image.layers if layer.status in ("unchanged", "kept")}
    assert rewritten and kept
    uploaded = {"sha256:" + u.split("digest=sha256%3A")[-1].split("digest=sha256:")[-1] for u in uploads}
    assert rewritten <= uploaded and not kept & uploaded
    assert len(uploaded - rewritten) == 1  # the new config
    assert mounts == len(kept)
    raw = skopeo_inspect_raw(f"docker://{registry.host}/tr/dive-opt:v1")
    assert report.pushed_digest == "sha256:" + hashlib.sha256(raw).hexdigest()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "optimizer", *args], capture_output=True, text=True, cwd=ROOT, check=False
    )


def test_cli_registry_to_registry_and_mixed_with_files(
    registry_factory: Any, fixtures: Path, tmp_path: Path
) -> None:
    """``optimize docker://... docker://...``, ``docker://... FILE`` and ``FILE docker://...`` through the CLI,
    against an htpasswd-protected registry (credentials from the flags, and from the environment)."""
    protected = registry_factory(htpasswd={"carol": "c-pass"})
    source = push_layout(
        fixtures / "images" / "sylabs-oci-tools" / "hello-world-docker-v2-manifest-list",
        protected,
        "cli/src:v1",
    )
    flags = ["--src-tls-verify=false", "--dest-tls-verify=false", "--passes", "none", "-q"]
    creds = ["--src-creds", "carol:c-pass", "--dest-creds", "carol:c-pass"]

    done = _cli(
        source,
        f"docker://{protected.host}/cli/dst:v1-opt",
        *flags,
        *creds,
        "--report",
        str(tmp_path / "r.json"),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    pushed = skopeo_inspect_raw(f"docker://{protected.host}/cli/dst:v1-opt", creds=protected.creds())
    assert "sha256:" + hashlib.sha256(pushed).hexdigest() in json.dumps(report)
    assert len(json.loads(pushed)["manifests"]) == 9  # every platform kept

    done = _cli(source, str(tmp_path / "out.tar"), *flags, *creds)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.tar").stat().st_size > 0

    # FILE -> docker://, credentials from the environment; --insecure-registry instead of --dest-tls-verify.
    env_run = subprocess.run(
        [
            sys.executable,
            "-m",
            "optimizer",
            str(tmp_path / "out.tar"),
            f"docker://{protected.host}/cli/fromfile:v1",
            "--insecure-registry",
            protected.host,
            "--passes",
            "none",
            "-q",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        env={
            **os.environ,
            "OCI_OPTIMIZER_REGISTRY_USER": "carol",
            "OCI_OPTIMIZER_REGISTRY_PASSWORD": "c-pass",
        },
    )
    assert env_run.returncode == 0, env_run.stderr
    assert json.loads(
        skopeo_inspect_raw(f"docker://{protected.host}/cli/fromfile:v1", creds=protected.creds())
    )

    # Wrong credentials: exit code 8 (RegistryError), and the password is not printed.
    done = _cli(source, str(tmp_path / "never.tar"), *flags, "--src-creds", "carol:WRONG-secret")
    assert done.returncode == 8, done.stderr
    assert "authentication failed" in done.stderr and "WRONG-secret" not in done.stderr + done.stdout

"""``docker://`` inputs and outputs: pulled into a layout, optimized, pushed back, against a real registry."""

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
from optimizer.registry import Credentials, Reference
from optimizer.transport import (
    TransportOptions,
    add_arguments,
    client_for,
    fetch_input,
    is_registry_ref,
    options_from_args,
    parse_registry_ref,
    publish_output,
)
from tests.conftest import ROOT, fixture
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


def test_local_paths_pass_through(tmp_path: Path) -> None:
    assert fetch_input("some/image.tar", str(tmp_path)) == "some/image.tar"
    assert list(tmp_path.iterdir()) == []


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
    options = options_from_args(args)
    assert options == TransportOptions(
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
    defaults = options_from_args(parser.parse_args([]))
    assert defaults == TransportOptions()
    with pytest.raises(SystemExit):
        parser.parse_args(["--dest-tls-verify=maybe"])


def test_docker_input_and_output_through_the_optimizer(
    registry: RunningRegistry, fixtures: Path, tmp_path: Path
) -> None:
    """docker:// in, optimize (a pure repack keeps every blob), docker:// out: nothing uploaded again."""
    source = push_layout(fixture("images/stereoscope/oci-layout-multiplatform"), registry, "tr/multi:v1")
    layout = fetch_input(source, str(tmp_path / "work"), insecure=True)
    assert Path(layout).parent == tmp_path / "work"
    raw = skopeo_inspect_raw(source)
    index = json.loads((Path(layout) / "index.json").read_text())
    assert index["manifests"][0]["digest"] == "sha256:" + hashlib.sha256(raw).hexdigest()

    optimize(layout, str(tmp_path / "out"), Options(output_format="oci-dir", passes=()))
    destination = f"docker://{registry.host}/tr/multi:v1-opt"
    digest = publish_output(str(tmp_path / "out"), destination, insecure=True, source=source)
    stats = client_for(registry.host, insecure=True).last_stats
    assert stats.blobs_uploaded == 0  # unchanged layers are mounted from tr/multi, never sent
    assert stats.blobs_mounted + stats.blobs_present > 0
    pushed = skopeo_inspect_raw(destination)
    assert digest == "sha256:" + hashlib.sha256(pushed).hexdigest()
    platforms = sorted(
        (m["platform"]["os"], m["platform"]["architecture"]) for m in json.loads(pushed)["manifests"]
    )
    assert platforms == sorted(
        (m["platform"]["os"], m["platform"]["architecture"]) for m in json.loads(raw)["manifests"]
    )


def test_docker_archive_image_optimized_and_pushed_to_another_repository(
    registry: RunningRegistry, fixtures: Path, tmp_path: Path
) -> None:
    """A docker-save image in the registry, optimized with the default passes and published: exactly the blobs
    the optimizer wrote anew are uploaded; the ones it kept are mounted from the source repository."""
    source = f"docker://{registry.host}/tr/dive:v1"
    skopeo_copy(f"docker-archive:{fixture('images/dive/test-docker-image.tar')}", source)
    layout = Path(fetch_input(source, str(tmp_path / "work"), insecure=True))
    optimize(str(layout), str(tmp_path / "out"), Options(output_format="oci-dir"))
    kept = {p.name for p in (layout / "blobs" / "sha256").iterdir()}
    written = {p.name for p in (tmp_path / "out" / "blobs" / "sha256").iterdir()}
    out_index = json.loads((tmp_path / "out" / "index.json").read_text())
    manifests = {d["digest"][7:] for d in out_index["manifests"]}
    with FaultProxy(registry.host) as proxy:
        destination = f"docker://{proxy.host}/tr/dive-opt:v1"
        digest = publish_output(
            str(tmp_path / "out"), destination, insecure=True, source=f"docker://{proxy.host}/tr/dive:v1"
        )
        uploads = [r.path for r in proxy.requests if r.method == "PUT" and "/blobs/uploads/" in r.path]
        mounts = proxy.count("POST", "mount=", status=201)
        stats = client_for(proxy.host, insecure=True).last_stats
    new_blobs = written - kept - manifests
    assert len(uploads) == len(new_blobs) == stats.blobs_uploaded
    assert sorted(u.split("digest=sha256%3A")[-1].split("digest=sha256:")[-1] for u in uploads) == sorted(
        new_blobs
    )
    assert mounts == len((written & kept) - manifests) == stats.blobs_mounted
    raw = skopeo_inspect_raw(f"docker://{registry.host}/tr/dive-opt:v1")
    assert digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert digest[7:] in manifests


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
        fixture("images/sylabs-oci-tools/hello-world-docker-v2-manifest-list"),
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

"""``passes.inject.certs``: what counts as present, where the bundle goes, links, symlinked directories,
and ``--ca-bundle`` validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from optimizer.errors import UsageError
from optimizer.model import EntryKind
from passes.inject import Inject, InjectOptions
from passes.inject.certs import CA_BUNDLE_PATHS, find_ca_certificates, validate_ca_bundle
from tests.passes.inject.runs import CERTIFI, DEBIAN_BUNDLE, PEM, Spec, d, f, link, make_fs, run_inject


@pytest.mark.parametrize(
    "layer, env",
    [pytest.param([f(path, PEM)], {}, id=path) for path in CA_BUNDLE_PATHS]
    + [
        pytest.param(
            [
                f("usr/share/ca-certificates/mozilla/x.crt", PEM),
                link("etc/ssl/certs/abcd1234.0", "/usr/share/ca-certificates/mozilla/x.crt"),
            ],
            {},
            id="hashed-directory",
        ),
        pytest.param(
            [
                f("usr/share/ca/bundle.pem", PEM),
                link("etc/ssl/certs/ca-certificates.crt", "../../../usr/share/ca/bundle.pem"),
            ],
            {},
            id="bundle-symlink",
        ),
        pytest.param(
            [f("opt/certs/roots.pem", PEM)], {"SSL_CERT_FILE": "/opt/certs/roots.pem"}, id="SSL_CERT_FILE"
        ),
        pytest.param(
            [f("opt/certs/roots.pem", PEM)], {"SSL_CERT_DIR": "/nowhere:/opt/certs"}, id="SSL_CERT_DIR"
        ),
        pytest.param(
            [f("usr/lib/ssl/certs/ca.pem", PEM), link("etc/ssl", "../usr/lib/ssl")],
            {},
            id="symlinked-etc-ssl",
        ),
    ],
)
def test_existing_certificates_are_found(tmp_path: Path, layer: list[Spec], env: dict[str, str]) -> None:
    config = {"Env": [f"{k}={v}" for k, v in env.items()]}
    run = run_inject(
        tmp_path,
        make_fs(tmp_path, layer),
        InjectOptions(zoneinfo=False, passwd=False, needed_only=False),
        config,
    )
    assert run.changes == []
    assert [f.action for f in run.report.findings] == ["kept"]


@pytest.mark.parametrize(
    "layer",
    [
        pytest.param([f(DEBIAN_BUNDLE, b"")], id="empty-bundle"),
        pytest.param([link(DEBIAN_BUNDLE, "/usr/share/ca-certificates/gone.crt")], id="dangling-symlink"),
        pytest.param([f("etc/ssl/certs/java/cacerts", b"\xfe\xed\xfe\xed")], id="java-keystore-only"),
        pytest.param([f("opt/certs/roots.pem", PEM), d("etc/ssl/certs")], id="bundle-nowhere-known"),
    ],
)
def test_no_usable_certificates_means_injection(tmp_path: Path, layer: list[Spec]) -> None:
    run = run_inject(
        tmp_path, make_fs(tmp_path, layer), InjectOptions(zoneinfo=False, passwd=False, needed_only=False)
    )
    assert DEBIAN_BUNDLE in run.added
    assert find_ca_certificates(run.after, {}) is not None


@pytest.mark.parametrize(
    "os_release, bundle, links",
    [
        ('ID=debian\nVERSION_ID="12"\n', DEBIAN_BUNDLE, {}),
        ("ID=ubuntu\nID_LIKE=debian\n", DEBIAN_BUNDLE, {}),
        ("ID=alpine\nVERSION_ID=3.20.0\n", DEBIAN_BUNDLE, {"etc/ssl/cert.pem": "certs/ca-certificates.crt"}),
        (
            'ID="rocky"\nID_LIKE="rhel centos fedora"\n',
            "etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
            {
                "etc/pki/tls/certs/ca-bundle.crt": "../../ca-trust/extracted/pem/tls-ca-bundle.pem",
                "etc/pki/tls/cert.pem": "../ca-trust/extracted/pem/tls-ca-bundle.pem",
            },
        ),
        ("ID=fedora\n", "etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", None),
        ('ID="opensuse-leap"\nID_LIKE="suse opensuse"\n', "etc/ssl/ca-bundle.pem", {}),
        ("ID=something-new\n", DEBIAN_BUNDLE, {"etc/ssl/cert.pem": "certs/ca-certificates.crt"}),
    ],
)
def test_bundle_goes_where_the_distribution_expects_it(
    tmp_path: Path, os_release: str, bundle: str, links: dict[str, str] | None
) -> None:
    # os-release as distributions ship it: /etc/os-release -> ../usr/lib/os-release
    fs = make_fs(
        tmp_path,
        [f("usr/lib/os-release", os_release.encode()), link("etc/os-release", "../usr/lib/os-release")],
    )
    run = run_inject(tmp_path, fs, InjectOptions(zoneinfo=False, passwd=False, needed_only=False))
    assert run.data(bundle) == CERTIFI
    added_links = {
        p: c.entry.link for p, c in run.added.items() if c.entry and c.entry.kind is EntryKind.SYMLINK
    }
    if links is not None:
        assert added_links == links
    for path in added_links:
        assert run.data(path) == CERTIFI
    assert find_ca_certificates(run.after, {}) is not None


def test_openssl_directory_gets_a_cert_pem_link(tmp_path: Path) -> None:
    # Debian with the openssl package but without ca-certificates: Python's ssl reads /usr/lib/ssl/cert.pem.
    fs = make_fs(
        tmp_path,
        [f("etc/os-release", b"ID=debian\n"), d("usr/lib/ssl"), link("usr/lib/ssl/certs", "/etc/ssl/certs")],
    )
    run = run_inject(tmp_path, fs, InjectOptions(zoneinfo=False, passwd=False, needed_only=False))
    assert run.added["usr/lib/ssl/cert.pem"].entry.link == "../../../etc/ssl/certs/ca-certificates.crt"  # type: ignore[union-attr]
    assert run.data("usr/lib/ssl/cert.pem") == CERTIFI


def test_symlinked_directories_are_followed(tmp_path: Path) -> None:
    fs = make_fs(tmp_path, [d("usr/lib/ssl"), link("etc/ssl", "../usr/lib/ssl")])
    run = run_inject(tmp_path, fs, InjectOptions(zoneinfo=False, passwd=False, needed_only=False))
    assert set(run.added) == {"usr/lib/ssl/certs/ca-certificates.crt", "usr/lib/ssl/cert.pem"}
    assert run.data("etc/ssl/certs/ca-certificates.crt") == CERTIFI
    assert run.after.get("etc/ssl") is not None and run.after.get("etc/ssl").entry.kind is EntryKind.SYMLINK  # type: ignore[union-attr]


def test_a_file_in_the_way_is_a_warning(tmp_path: Path) -> None:
    run = run_inject(
        tmp_path,
        make_fs(tmp_path, [f("etc/ssl", b"not a directory")]),
        InjectOptions(zoneinfo=False, passwd=False, needed_only=False),
    )
    assert run.changes == []
    [warning] = run.report.warnings  # the bundle could not go in, so neither does its cert.pem link
    assert "test-image: /etc/ssl/certs/ca-certificates.crt: not added" in warning


def test_ca_bundle_option_is_validated(tmp_path: Path, test_ca: dict[str, Path]) -> None:
    assert validate_ca_bundle(test_ca["ca"].read_bytes(), "ca") == 1
    assert validate_ca_bundle(CERTIFI, "certifi") == CERTIFI.count(b"-----BEGIN CERTIFICATE-----")
    bad = {
        "with-key.pem": test_ca["ca"].read_bytes() + test_ca["ca-key"].read_bytes(),
        "empty.pem": b"",
        "text.pem": b"hello\n",
        "corrupt.pem": test_ca["ca"].read_bytes().replace(b"\n", b"\nAAAA", 3),
        "csr.pem": test_ca["server-csr"].read_bytes(),
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UsageError, match=re.escape(name)):
            Inject(InjectOptions(ca_bundle=str(tmp_path / name)))
    with pytest.raises(UsageError, match=r"nowhere\.pem"):
        Inject(InjectOptions(ca_bundle=str(tmp_path / "nowhere.pem")))
    run = run_inject(
        tmp_path,
        make_fs(tmp_path, []),
        InjectOptions(ca_bundle=str(test_ca["ca"]), zoneinfo=False, needed_only=False),
    )
    assert run.data(DEBIAN_BUNDLE) == test_ca["ca"].read_bytes()
    assert str(test_ca["ca"]) in run.added[DEBIAN_BUNDLE].reason

"""service.yaml: strict parsing, secrets that never print, destinations, pass options."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from optimizer.errors import UsageError
from optimizer.service.config import Secret, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "testdata" / "service.example.yaml"

BASE: dict[str, Any] = {
    "listen": "127.0.0.1:9000",
    "state_dir": "/tmp/x",
    "registries": {"local": {"url": "http://127.0.0.1:5000"}},
    "sources": {"reg": {"registry": "local", "bearer_token": "t0ken"}},
    "rules": [{"name": "r", "registry": "local", "destination": {"tag_suffix": "-opt"}}],
}


def config_with(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data.update(changes)
    return data


def test_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_PASSWORD", "pw")
    monkeypatch.setenv("HOOK_TOKEN", "hook")
    config = load_config(EXAMPLE)
    assert config.registries["local"].host == "127.0.0.1:5000" and config.registries["local"].insecure
    assert config.registries["local"].password is not None
    assert config.registries["local"].password.reveal() == "pw"
    assert config.sources["local-registry"].bearer_token == Secret("hook", "x")
    apps, mirror = config.rules
    assert apps.destination.render("team/app", "1.0") == ("team/app", "1.0-opt")
    assert apps.destination.allows("1.0-opt") and not apps.destination.allows("1.0")
    assert config.registry_limits == {"local": 4} and config.queue.backend == "sqlite"
    assert mirror.destination.render("release/tool", "2") == ("optimized/tool", "2")
    assert apps.options.skip == ("upx",) and mirror.options.passes == ("strip-elf",) and mirror.options.strict


def test_minimal_config_defaults() -> None:
    config = parse_config(BASE)
    assert (config.listen_host, config.listen_port, config.concurrency) == ("127.0.0.1", 9000, 2)
    assert (config.queue.backend, config.queue.lease_seconds, config.queue.heartbeat_seconds) == (
        "sqlite",
        120,
        30,
    )
    assert config.reconcile is None and config.registry_limits == {} and not config.rules[0].push_if_larger
    assert config.database == Path("/tmp/x/queue.sqlite3")
    rule = config.rules[0]
    assert rule.matches("local", "a/b", "v1") and not rule.matches("other", "a/b", "v1")
    assert not rule.matches("local", "a/b", "v1-opt")  # our own output tag is never an input


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"surprise": 1}, "surprise: unknown key"),
        ({"listen": "nope"}, "listen: expected HOST:PORT"),
        ({"concurrency": 0}, "concurrency: expected an integer >= 1"),
        ({"concurrency": True}, "concurrency: expected an integer"),
        ({"registries": {}}, "registries: at least one registry"),
        ({"registries": {"local": {"url": "ftp://x"}}}, "registries.local.url"),
        ({"registries": {"local": {"url": "http://u:p@x:5000"}}}, "no credentials"),
        ({"registries": {"local": {"url": "http://x", "tls": 1}}}, "registries.local.tls: unknown key"),
        ({"sources": {"s": {"registry": "nope", "bearer_token": "t"}}}, "no registry named 'nope'"),
        ({"sources": {"s": {"registry": "local"}}}, "give exactly one of bearer_token or hmac_secret"),
        ({"sources": {"s": {"registry": "local", "bearer_token": "t", "hmac_secret": "h"}}}, "exactly one"),
        ({"sources": {"s": {"registry": "local", "bearer_token": ""}}}, "the secret is empty"),
        (
            {"sources": {"s": {"registry": "local", "bearer_token": {"env": "NOT_SET_ANYWHERE_42"}}}},
            "not set",
        ),
        ({"sources": {"s": {"registry": "local", "format": "quay", "bearer_token": "t"}}}, "format"),
        ({"rules": []}, "rules: expected a non-empty list"),
        ({"rules": [{"name": "r", "registry": "local"}]}, "destination: required"),
        ({"rules": [{"name": "r", "registry": "local", "destination": {}}]}, "would replace the source tag"),
        (
            {"rules": [{"name": "r", "registry": "local", "destination": {"tag": "{branch}"}}]},
            "unknown placeholder",
        ),
        (
            {
                "rules": [
                    {"name": "r", "registry": "local", "destination": {"same_tag": True, "tag_suffix": "-o"}}
                ]
            },
            "only one of",
        ),
        (
            {
                "rules": [
                    {"name": "r", "registry": "local", "destination": {"registry": "x", "tag_suffix": "-o"}}
                ]
            },
            "no registry named 'x'",
        ),
        (
            {
                "rules": [
                    {"name": "r", "registry": "local", "destination": {"tag_suffix": "-o"}},
                    {"name": "r", "registry": "local", "destination": {"tag_suffix": "-p"}},
                ]
            },
            "used twice",
        ),
        (
            {"rules": [{"name": "r", "registry": "local", "destination": {"tag_suffix": "-o"}, "tags": [1]}]},
            "rules[0].tags",
        ),
        (
            {
                "rules": [
                    {
                        "name": "r",
                        "registry": "local",
                        "destination": {"tag_suffix": "-o"},
                        "options": {"skip": ["x"]},
                    }
                ]
            },
            "unknown pass 'x'",
        ),
        ({"retry": {"attempts": 0}}, "retry.attempts"),
        ({"queue": {"backend": "mysql"}}, "queue.backend: expected sqlite or postgres"),
        ({"queue": {"backend": "postgres"}}, "queue.dsn: required for the postgres backend"),
        ({"queue": {"dsn": "postgresql://x"}}, "queue.dsn: only for the postgres backend"),
        ({"queue": {"lease_seconds": 10, "heartbeat_seconds": 6}}, "more than half of lease_seconds"),
        ({"queue": {"lease_seconds": 0.5}}, "queue.lease_seconds: expected a number >= 1.0"),
        ({"queue": {"pool": 3}}, "queue.pool: unknown key"),
        ({"registries": {"local": {"url": "http://x", "max_concurrent_jobs": 0}}}, "max_concurrent_jobs"),
        ({"reconcile": {"interval_seconds": 60}}, "reconcile.repositories: required"),
        ({"reconcile": {"repositories": {"nope": ["a"]}}}, "reconcile.repositories.nope: no registry"),
        ({"reconcile": {"repositories": {"local": ["../x"]}}}, "'../x' is not a repository name"),
        ({"reconcile": {"repositories": {"local": ["a"]}, "every": 1}}, "reconcile.every: unknown key"),
        (
            {
                "rules": [
                    {"name": "r", "registry": "local", "destination": {"tag_suffix": "-o", "allowed_tags": 3}}
                ]
            },
            "rules[0].destination.allowed_tags",
        ),
        (
            {
                "rules": [
                    {
                        "name": "r",
                        "registry": "local",
                        "destination": {"tag_suffix": "-o"},
                        "push_if_larger": 1,
                    }
                ]
            },
            "rules[0].push_if_larger: expected true or false",
        ),
        ({"log_level": "chatty"}, "log_level"),
    ],
)
def test_bad_configs_name_the_key(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_config(config_with(**changes))
    assert message in str(caught.value)


def test_secrets_from_env_and_file_never_print(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET_T", "from-env-123")
    secret_file = tmp_path / "gh"
    secret_file.write_text("from-file-456\n")
    config = parse_config(
        config_with(
            sources={
                "a": {"registry": "local", "bearer_token": {"env": "HOOK_SECRET_T"}},
                "b": {"registry": "local", "hmac_secret": {"file": str(secret_file)}},
            }
        )
    )
    a, b = config.sources["a"], config.sources["b"]
    assert a.bearer_token is not None and a.bearer_token.reveal() == "from-env-123"
    assert b.hmac_secret is not None and b.hmac_secret.reveal() == "from-file-456"
    shown = repr(config)
    assert "from-env-123" not in shown and "from-file-456" not in shown and "t0ken" not in shown
    assert "env HOOK_SECRET_T" in shown


def test_queue_and_reconcile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTIMIZER_DSN_T", "postgresql://optimizer:pw-in-dsn@db:5432/q")
    config = parse_config(
        config_with(
            queue={"backend": "postgres", "dsn": {"env": "OPTIMIZER_DSN_T"}, "lease_seconds": 8},
            reconcile={"interval_seconds": 30, "repositories": {"local": ["team/app", "team/tool"]}},
        )
    )
    assert config.queue.backend == "postgres" and config.queue.dsn is not None
    assert config.queue.heartbeat_seconds == 2  # a quarter of a short lease unless given
    assert config.reconcile is not None and config.reconcile.repositories == {
        "local": ("team/app", "team/tool")
    }
    assert "pw-in-dsn" not in repr(config)


def test_pass_options_are_typed(tmp_path: Path) -> None:
    from passes import PASSES

    strip = next(p for p in PASSES if p.name == "strip-elf")
    import dataclasses

    fields = [f for f in dataclasses.fields(strip.Options) if f.type in ("bool", bool)]
    assert fields, "strip-elf has boolean options (keep_debuglink, archives)"
    name = fields[0].name
    default = getattr(strip.Options(), name)
    rule = {
        "name": "r",
        "registry": "local",
        "destination": {"tag_suffix": "-o"},
        "options": {"pass_options": {"strip-elf": {name: not default}}},
    }
    config = parse_config(config_with(rules=[rule]))
    assert getattr(config.rules[0].options.options_for(strip), name) is (not default)
    rule["options"] = {"pass_options": {"strip-elf": {name: "yes"}}}
    with pytest.raises(UsageError, match=f"strip-elf.{name}: expected true or false"):
        parse_config(config_with(rules=[rule]))
    rule["options"] = {"pass_options": {"strip-elf": {"no_such_option": 1}}}
    with pytest.raises(UsageError, match=r"strip-elf: unknown key\(s\) no_such_option"):
        parse_config(config_with(rules=[rule]))


def test_load_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "service.yaml"
    path.write_text(yaml.safe_dump(config_with(state_dir="state")))
    assert load_config(path).state_dir == tmp_path / "state"
    path.write_text("listen: [unclosed")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(UsageError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_run_options_of_a_rule() -> None:
    rule = {
        "name": "r",
        "registry": "local",
        "destination": {"tag_suffix": "-o"},
        "options": {"compression": "zstd:19", "recompress": True, "normalize": True, "keep_layers": 2},
    }
    config = parse_config(config_with(rules=[rule]))
    options = config.rules[0].options
    assert (str(options.compression), options.recompress, options.normalize, options.base_layers) == (
        "zstd:19",
        True,
        True,
        2,
    )
    from optimizer.service.job import options_for

    built = options_for(options, config, "/tmp/job", None)
    assert (str(built.compression), built.recompress, built.normalize, built.base_layers) == (
        "zstd:19",
        True,
        True,
        2,
    )
    assert built.workdir == "/tmp/job" and built.registry.user_agent == config.user_agent
    rule["options"] = {"compression": "brotli"}
    with pytest.raises(UsageError, match=r"rules\[0\].options.compression: unknown compression"):
        parse_config(config_with(rules=[rule]))


def test_optimize_serve_refuses_a_bad_config_with_exit_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "service.yaml"
    path.write_text(yaml.safe_dump(config_with(concurrency="many")))
    done = subprocess.run(
        [sys.executable, "-m", "optimizer", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        timeout=60,
    )
    assert done.returncode == 2
    assert f"{path}: concurrency: expected an integer" in done.stderr


def test_optimize_serve_refuses_an_unknown_role(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "service.yaml"
    path.write_text(yaml.safe_dump(BASE))
    done = subprocess.run(
        [sys.executable, "-m", "optimizer", "serve", "--config", str(path), "--role", "janitor"],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        timeout=60,
    )
    assert done.returncode == 2 and "--role: invalid choice: 'janitor'" in done.stderr


def test_limits_and_hostile_input_settings_of_a_rule() -> None:
    rule: dict[str, Any] = {
        "name": "r",
        "registry": "local",
        "destination": {"tag_suffix": "-o"},
        "options": {"sanitize": True, "limits": {"max_layer_bytes": "4G", "max-layers": 50}},
    }
    options = parse_config(config_with(rules=[rule])).rules[0].options
    assert options.sanitize and options.limits.max_layer_bytes == 4 << 30 and options.limits.max_layers == 50
    from optimizer.service.job import options_for

    assert (
        options_for(options, parse_config(config_with(rules=[rule])), "/tmp/job", None).limits
        == options.limits
    )
    rule["options"] = {"limits": {"max_layer_bytes": "lots"}}
    with pytest.raises(UsageError, match=r"options.limits.max_layer_bytes"):
        parse_config(config_with(rules=[rule]))
    rule["options"] = {"limits": 5}
    with pytest.raises(UsageError, match=r"options.limits: expected a mapping"):
        parse_config(config_with(rules=[rule]))

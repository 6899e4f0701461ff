"""compose/ is deployable as written: its commands, flags and variables exist in podchord."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from workers.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "compose" / "compose.yaml"
EXAMPLE_ENV = REPO / "compose" / "example.env"
OPERATIONS = REPO / "docs" / "operations.md"

# ${VAR}, ${VAR:-default}, ${VAR:?message}; "$$" is compose's escape for a literal "$".
_REF = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
_VAR = re.compile(r"\bPODCHORD_[A-Z0-9_]*[A-Z0-9]\b")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _example_env() -> dict[str, str]:
    env = {}
    for line in EXAMPLE_ENV.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"example.env: not KEY=VALUE: {line!r}"
            env[key] = value
    return env


def _interpolate(text: str, env: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in env:
            return env[name]
        assert op is not None, f"${{{name}}} has no default and is not in example.env"
        assert "-" in op, f"${{{name}}} has no default and is not in example.env"
        return arg
    return _REF.sub(sub, text).replace("$$", "$")


def _strings(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def _podchord_commands(compose: dict) -> list[tuple[str, list[str]]]:
    found = []
    for name, svc in compose["services"].items():
        cmd = svc.get("command")
        if isinstance(cmd, list) and cmd and cmd[0] == "podchord":
            found.append((name, cmd[1:]))
        test = (svc.get("healthcheck") or {}).get("test") or []
        if "podchord" in test:
            found.append((f"{name} healthcheck", test[test.index("podchord") + 1 :]))
    return found


def test_compose_has_every_role(compose):
    services = compose["services"]
    assert {"redis", "minio", "worker", "beat", "flower"} <= set(services)
    worker = services["worker"]
    assert worker["privileged"] is True
    assert any(v.endswith(":/run/podman/podman.sock") for v in worker["volumes"])
    for name, svc in services.items():
        assert "healthcheck" in svc or svc.get("restart") == "no", f"{name} has no healthcheck"
    assert "podchord" in worker["healthcheck"]["test"]
    assert "--check" in worker["healthcheck"]["test"]


def test_every_podchord_command_and_flag_exists(compose):
    env = _example_env()
    commands = _podchord_commands(compose)
    used = {argv[0] for _, argv in commands}
    assert {"worker", "beat", "flower", "status"} <= used, used
    parser = build_parser()
    for where, argv in commands:
        argv = [_interpolate(a, env) for a in argv]
        try:
            parser.parse_args(argv)
        except SystemExit as exc:  # argparse already printed which flag is wrong
            pytest.fail(f"compose {where}: `podchord {' '.join(argv)}` does not parse ({exc})")


def _documented() -> set[str]:
    rows = re.findall(r"^\| `(PODCHORD_[A-Z0-9_]+)` \|", OPERATIONS.read_text(), re.M)
    assert rows, "docs/operations.md has no settings table"
    return set(rows)


def _in_code() -> set[str]:
    found: set[str] = set()
    for path in [*(REPO / "tasks").glob("*.py"), *(REPO / "workers").glob("*.py")]:
        found |= set(_VAR.findall(path.read_text()))
    return found


def test_every_documented_variable_is_read_by_the_code():
    missing = _documented() - _in_code()
    assert not missing, f"documented in docs/operations.md but read nowhere: {sorted(missing)}"
    settings = set(_VAR.findall((REPO / "tasks" / "settings.py").read_text()))
    assert settings <= _documented(), sorted(settings - _documented())


def test_every_podchord_variable_in_compose_is_documented_and_read(compose):
    known = _documented() & _in_code()
    texts = [*_strings(compose), EXAMPLE_ENV.read_text()]
    for svc in compose["services"].values():
        env = svc.get("environment") or {}
        texts += list(env) if isinstance(env, dict) else [e.split("=")[0] for e in env]
    used = {v for t in texts for v in _VAR.findall(t)}
    assert used, "compose uses no PODCHORD_* variable?"
    unknown = used - known
    assert not unknown, f"compose/ uses variables podchord does not know: {sorted(unknown)}"


def test_every_interpolated_variable_has_a_value(compose):
    env = _example_env()
    for text in _strings(compose):
        _interpolate(text, env)  # asserts on a variable with neither a value nor a default

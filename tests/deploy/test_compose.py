"""docker-compose.yml and the Dockerfiles, checked statically: Docker cannot run here.

The compose file is interpolated the way Compose does (`${VAR}`, `${VAR:-default}`,
`${VAR:?message}` over the whole file, before profiles apply), validated against the
Compose Specification's JSON schema, and its services are held to what the supervisor runs
without Docker, so `regime3 up` and `docker compose up` start the same commands.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft201909Validator

from services.supervisor import SERVICES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = Path(__file__).with_name("compose-spec.json")
ENV = {
    "R3_TRAINER_HOST": "192.168.1.10",
    "R3_REDIS_PASSWORD": "pw" * 16,
    "R3_ADMIN_TOKEN": "a" * 32,
    "R3_NODE_TOKEN": "n" * 32,
}
PATTERN = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|:\?|-|\?)(?P<arg>[^}]*))?\}"
)


class MissingVariable(Exception):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg") or ""
        value = env.get(name)
        if op in (":?", "?") and (value is None or (op == ":?" and value == "")):
            raise MissingVariable(f"{name}: {arg}")
        if op == ":-" and not value:
            return arg
        if op == "-" and value is None:
            return arg
        return value or ""

    return PATTERN.sub(one, text)


def interpolate_all(value: Any, env: dict[str, str]) -> Any:
    # Compose interpolates parsed values (not comments), keys excepted.
    if isinstance(value, str):
        return interpolate(value, env)
    if isinstance(value, dict):
        return {key: interpolate_all(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate_all(item, env) for item in value]
    return value


def load(env: dict[str, str] = ENV) -> dict[str, Any]:
    data: dict[str, Any] = interpolate_all(yaml.safe_load(COMPOSE.read_text()), env)
    return data


def services_of(profile: str) -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in load()["services"].items() if profile in spec["profiles"]}


def compose_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA.read_text())
    # The vendored schema predates the top-level project `name` (compose-spec, 2022); the
    # current specification has it as a plain string.
    schema["properties"].setdefault("name", {"type": "string"})
    return schema


def test_validates_against_the_compose_specification() -> None:
    schema = compose_schema()
    errors = sorted(Draft201909Validator(schema).iter_errors(load()), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_schema_catches_a_mistake() -> None:
    # The check above must be able to fail: a misspelt key is refused.
    data = load()
    data["services"]["trainer"]["depends_on"]["redis"]["condition"] = "service_ready"
    assert list(Draft201909Validator(compose_schema()).iter_errors(data))


@pytest.mark.parametrize(
    "missing", ["R3_TRAINER_HOST", "R3_REDIS_PASSWORD", "R3_ADMIN_TOKEN", "R3_NODE_TOKEN"]
)
def test_required_variables_stop_compose_with_their_name(missing: str) -> None:
    env = {k: v for k, v in ENV.items() if k != missing}
    with pytest.raises(MissingVariable, match=missing):
        load(env)


def test_one_profile_per_host_running_the_supervisors_commands() -> None:
    trainer, node = services_of("trainer"), services_of("node")
    assert set(trainer) == {"redis", "trainer", "inbox", "gateway", "feeder"}
    assert set(node) == {"node", "node-worker"}
    commands = {spec.name: ["python", "-m", spec.module] for spec in SERVICES}
    for name, spec in {**trainer, **node}.items():
        if name == "redis":
            continue
        command = spec["command"]
        if name == "trainer":  # one torchrun rank a GPU, running the same module
            assert command[:4] == ["torchrun", "--standalone", "--nproc-per-node", "1"], command
            command = ["python", *command[4:]]
        assert command == commands[name], name
        module = commands[name][2]
        assert (ROOT / module.replace(".", "/")).exists() or (
            ROOT / (module.replace(".", "/") + ".py")
        ).exists(), f"{name}: {module} does not exist"


def test_health_restart_and_dependencies() -> None:
    services = load()["services"]
    for name, spec in services.items():
        assert spec["restart"] == "unless-stopped", name
        if name != "feeder":  # it serves nothing and holds no queue: nothing to ask
            assert spec["healthcheck"]["test"][0] == "CMD", name
        for dependency in spec.get("depends_on", {}).values():
            assert dependency["condition"] == "service_healthy", name
    assert services["node-worker"]["depends_on"] == {"node": {"condition": "service_healthy"}}
    for name in ("trainer", "node"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        devices = [{**d, "count": int(d["count"])} for d in devices]  # Compose casts "1"
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # R3_TRAINER_GPUS=N: N cards reserved and N torchrun ranks.
    trainer = load({**ENV, "R3_TRAINER_GPUS": "2"})["services"]["trainer"]
    assert trainer["command"][3] == "2"
    assert trainer["deploy"]["resources"]["reservations"]["devices"][0]["count"] == "2"


def test_state_lives_in_volumes() -> None:
    data = load()
    services = data["services"]
    assert set(data["volumes"]) == {"redis-data", "data", "node-data"}
    assert "redis-data:/data" in services["redis"]["volumes"]
    for name in ("trainer", "inbox", "gateway"):  # checkpoints and datasets under /data
        assert "data:/data" in services[name]["volumes"], name
    for name in ("trainer", "node"):
        assert any(v.endswith(":/models:ro") for v in services[name]["volumes"]), name
    # The node host reaches the trainer host's Redis and gateway at the address given.
    env = services["node"]["environment"]
    assert env["R3_REDIS_URL"] == f"redis://:{'pw' * 16}@192.168.1.10:6379/0"
    # Redis itself asks for the password (RQ jobs are pickles: writing to Redis runs code).
    assert services["redis"]["command"][-2:] == ["--requirepass", "pw" * 16]
    assert services["trainer"]["environment"]["R3_REDIS_URL"].startswith(f"redis://:{'pw' * 16}@")
    assert env["R3_GATEWAY_URL"] == "http://192.168.1.10:8080"


@pytest.mark.parametrize("dockerfile", ["Dockerfile.trainer", "Dockerfile.node"])
def test_dockerfiles_pass_hadolint_and_copy_what_exists(dockerfile: str) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(hadolint).exists(), "hadolint is missing: pip install -e '.[test]' installs it"
    result = subprocess.run(
        [hadolint, "--no-color", str(ROOT / dockerfile)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for line in (ROOT / dockerfile).read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"{dockerfile}: COPY {source} is missing"

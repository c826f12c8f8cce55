"""The Dockerfile and docker-compose.yml (no Docker engine here, so their structure is checked)."""

from __future__ import annotations

import pathlib
import re

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_compose_parses_and_wires_redis_postgres_and_the_server_with_healthchecks() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "postgres", "chatmem"}
    assert all("healthcheck" in s for s in services.values())
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    env = services["chatmem"]["environment"]
    assert env["DATABASE__URL"].startswith("postgresql://") and env["REDIS__HOST"] == "redis"
    assert services["chatmem"]["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
    }


def test_dockerfile_is_multi_stage_and_runs_unprivileged() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    assert "COPY --from=build" in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in {"root", "0"}
    assert "HEALTHCHECK" in text

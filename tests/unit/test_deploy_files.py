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


def test_the_healthchecks_run_the_health_subcommand() -> None:
    # The subcommand reads the server's own settings (address, TLS); a hard-coded plaintext dial does not.
    dockerfile = (ROOT / "Dockerfile").read_text()
    check = re.search(r"^HEALTHCHECK .*?CMD (.*)$", dockerfile, re.M | re.S)
    assert check and '["chatmem-server", "health"' in check.group(1)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["chatmem"]["healthcheck"]["test"][:3] == ["CMD", "chatmem-server", "health"]


def test_dependencies_are_installed_before_the_sources_are_copied() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    first_install = next(i for i, line in enumerate(lines) if "pip install" in line)
    copies = [i for i, line in enumerate(lines) if line.startswith("COPY ") and "--from" not in line]
    metadata = [i for i in copies if "pyproject.toml" in lines[i]]
    sources = [i for i in copies if i not in metadata]
    assert metadata and all(i < first_install for i in metadata)
    assert sources and all(i > first_install for i in sources)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "bench/results", "*.db"} <= set(ignored)

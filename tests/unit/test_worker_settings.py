"""GRPC__WORKERS: ``auto`` is one worker per core only where several processes are safe; numbers are checked."""

from __future__ import annotations

import os
import pathlib
import socket

import pytest
from pydantic import ValidationError

from server import config as config_module
from server.config import MAX_WORKERS, Settings
from server.cores import available_cores, quota_cores
from server.workers import port_in_use

PG = "postgresql://u@127.0.0.1:5432/db"


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name in [k for k in os.environ if k.startswith(("GRPC__", "DATABASE__"))]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_the_default_is_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings(monkeypatch).grpc.workers == "auto"


def test_auto_with_the_embedded_sqlite_store_is_one_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "available_cores", lambda: 8)
    assert settings(monkeypatch).worker_count == 1
    assert settings(monkeypatch, GRPC__WORKERS="auto").worker_count == 1


def test_auto_with_postgresql_is_one_worker_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "available_cores", lambda: 8)
    assert settings(monkeypatch, DATABASE__URL=PG, GRPC__ADDRESS="127.0.0.1:50051").worker_count == 8
    monkeypatch.setattr(config_module, "available_cores", lambda: 500)
    assert settings(monkeypatch, DATABASE__URL=PG, GRPC__ADDRESS="0.0.0.0:50051").worker_count == MAX_WORKERS


@pytest.mark.parametrize(
    "address", ["127.0.0.1:0", "unix:/tmp/chatmem.sock", "unix:///tmp/a:50051", "unix-abstract:chatmem:1"]
)
def test_auto_without_a_fixed_tcp_port_is_one_worker(monkeypatch: pytest.MonkeyPatch, address: str) -> None:
    # Port 0 would give every worker a port of its own; a Unix socket path cannot be shared.
    monkeypatch.setattr(config_module, "available_cores", lambda: 8)
    assert settings(monkeypatch, DATABASE__URL=PG, GRPC__ADDRESS=address).worker_count == 1


def test_an_explicit_number_is_used_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "available_cores", lambda: 8)
    assert settings(monkeypatch, DATABASE__URL=PG, GRPC__WORKERS="3").worker_count == 3
    assert settings(monkeypatch, DATABASE__URL=PG, GRPC__WORKERS="1").worker_count == 1
    assert settings(monkeypatch, GRPC__WORKERS="1").worker_count == 1


def test_several_workers_on_sqlite_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="one SQLite file has one writer"):
        settings(monkeypatch, GRPC__WORKERS="2")


def test_several_workers_on_port_zero_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="fixed port"):
        settings(monkeypatch, DATABASE__URL=PG, GRPC__WORKERS="2", GRPC__ADDRESS="127.0.0.1:0")


@pytest.mark.parametrize("value", ["0", "65", "many", "-1", "2.5"])
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    with pytest.raises(ValidationError, match="workers"):
        settings(monkeypatch, DATABASE__URL=PG, GRPC__WORKERS=value)


@pytest.mark.parametrize(
    ("line", "cores"),
    [("max 100000", None), ("200000 100000", 2), ("150000 100000", 2), ("50000 100000", 1), ("garbage", None)],
)
def test_a_cgroup_quota_caps_the_cores(line: str, cores: int | None) -> None:
    assert quota_cores(line) == cores


def test_available_cores_is_the_affinity_capped_by_the_quota(tmp_path: pathlib.Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    assert available_cores(tmp_path / "missing") == affinity
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cores(tmp_path / "cpu.max") == affinity
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert available_cores(tmp_path / "cpu.max") == 1


def test_a_port_with_a_listener_is_in_use() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        listener.listen()
        assert port_in_use(f"127.0.0.1:{port}")
    assert not port_in_use(f"127.0.0.1:{port}"), "free again once the listener closed"

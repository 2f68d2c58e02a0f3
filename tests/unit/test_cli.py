"""`fastapi-channels run`: what it refuses before starting anything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fastapi_channels import cli


def test_several_workers_on_the_memory_backend_are_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BACKEND_TYPE", "memory")
    monkeypatch.setattr("uvicorn.run", _must_not_run)
    assert cli.main(["run", "tests.app:app_from_env", "--factory", "--workers", "2"]) == 2
    message = capsys.readouterr().err
    assert "--workers 2" in message and "BACKEND_TYPE=memory" in message and "BACKEND_TYPE=redis" in message


def test_one_server_id_for_several_workers_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BACKEND_TYPE", "redis")
    monkeypatch.setenv("SERVER_INSTANCE_ID", "web-1")
    monkeypatch.setattr("uvicorn.run", _must_not_run)
    assert cli.main(["run", "tests.app:app_from_env", "--factory", "--workers", "3"]) == 2
    assert "SERVER_INSTANCE_ID" in capsys.readouterr().err


def test_one_worker_on_the_memory_backend_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKEND_TYPE", "memory")
    calls: list[dict[str, object]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **options: calls.append({"app": app, **options}))
    assert cli.main(["run", "tests.app:app_from_env", "--factory", "--workers", "1"]) == 0
    assert calls and calls[0]["workers"] == 1


def _must_not_run(*args: object, **kwargs: object) -> None:
    raise AssertionError("uvicorn.run must not be called")


def test_several_workers_get_a_fresh_prometheus_multiprocess_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BACKEND_TYPE", "redis")
    monkeypatch.delenv("SERVER_INSTANCE_ID", raising=False)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    seen: list[tuple[str, list[str]]] = []

    def run(app: str, **options: object) -> None:
        directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        seen.append((directory, os.listdir(directory)))

    monkeypatch.setattr("uvicorn.run", run)
    assert cli.main(["run", "tests.app:app_from_env", "--factory", "--workers", "2"]) == 0
    ((directory, files),) = seen
    assert files == []
    assert not os.path.exists(directory)  # made for the run, removed after it
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_a_given_prometheus_multiprocess_directory_is_wiped_before_the_workers_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BACKEND_TYPE", "redis")
    monkeypatch.delenv("SERVER_INSTANCE_ID", raising=False)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    (tmp_path / "counter_123.db").write_bytes(b"stale")
    (tmp_path / "keep.txt").write_text("not prometheus's")
    seen: list[list[str]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **options: seen.append(sorted(os.listdir(tmp_path))))
    assert cli.main(["run", "tests.app:app_from_env", "--factory", "--workers", "2"]) == 0
    assert seen == [["keep.txt"]]
    assert tmp_path.exists()


def test_the_graceful_shutdown_deadline_reaches_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKEND_TYPE", "memory")
    calls: list[dict[str, object]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **options: calls.append(options))
    assert cli.main(["run", "tests.app:app_from_env", "--factory", "--timeout-graceful-shutdown", "20"]) == 0
    assert calls[0]["timeout_graceful_shutdown"] == 20


def test_the_app_is_looked_for_in_the_current_directory_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BACKEND_TYPE", "memory")
    calls: list[dict[str, object]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **options: calls.append(options))
    assert cli.main(["run", "app:app"]) == 0
    assert cli.main(["run", "app:app", "--app-dir", "src"]) == 0
    assert [call["app_dir"] for call in calls] == [".", "src"]


def test_config_never_prints_a_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """README: credentials never reach an error, a log line or the stats; `fastapi-channels
    config` printed REDIS_URL whole, and an invalid one in pydantic's error with its input."""
    monkeypatch.setenv("REDIS_URL", "redis://user:hunter2@redis.example:6379/0")
    assert cli.main(["config"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "REDIS_URL=redis://user:***@redis.example:6379/0" in out

    monkeypatch.setenv("REDIS_URL", "http://user:hunter2@redis.example")  # not a Redis scheme
    assert cli.main(["config"]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err and "REDIS_URL" in err

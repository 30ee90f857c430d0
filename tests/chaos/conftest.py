"""Probes an outside tester would run against `deepr serve`: model control racing requests,
idle connections, bursts, hostile shared memory. Each probe is bounded in count and time.

This folder is a package so that its conftest does not take the name `conftest`, which the
other tests import their shared constants from."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from .probes import WIDE, ServerProcess, add_doubling_model, add_pictures_model, add_strings_model


@pytest.fixture(scope="session")
def chaos_repository(tmp_path_factory) -> Path:
    """`double` (no queue delay), `delayed` (200 ms queue delay), `wide` (48 KiB rows),
    `strings` (BYTES, batches of up to 256), `strings_free` (BYTES of any length, unbatched),
    `pictures` (picture files, decoded by the server)."""
    repository = tmp_path_factory.mktemp("chaos") / "repository"
    add_doubling_model(repository, "double")
    add_doubling_model(repository, "delayed", queue_delay_us=200_000)
    add_doubling_model(repository, "wide", width=WIDE)
    add_strings_model(repository, "strings")
    add_strings_model(repository, "strings_free", batched=False)
    add_pictures_model(repository, "pictures")
    return repository


@pytest.fixture()
def server_process(chaos_repository) -> Iterator:
    """Start servers with `server_process(*flags)`; each is stopped after the test."""
    servers: list[ServerProcess] = []

    def start(*args: str, repository: Path = chaos_repository, env: dict[str, str] | None = None) -> ServerProcess:
        servers.append(ServerProcess(repository, *args, env=env))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()

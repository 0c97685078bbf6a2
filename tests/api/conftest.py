"""Fixtures of the API tests: real server processes on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from api_helpers import ApiServer, StartServer, launch


@pytest.fixture
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """Factory: ``start_server(notes=[...], store_url=..., passphrase=..., args=(...))``.

    Each call gets its own data folder (a real SQLite db), ``file://`` store, config
    and cache folders; every server started is stopped at teardown.
    """
    started: list[ApiServer] = []

    def start(**kwargs: Any) -> ApiServer:
        root = kwargs.pop("root", None) or tmp_path_factory.mktemp("api")
        server = launch(root, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()

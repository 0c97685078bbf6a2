"""Issue item 4: storage faults between cloudkeep and an S3-compatible store.

A fault proxy (``fault_proxy.py``) sits between cloudkeep and the moto S3 server and
injects 503 bursts, connection resets before and after the request reached the store
(lost replies), truncated replies, stalls and a slow link. Operations either retry and
finish (and what they call done is then fully stored: checked and restored through a
direct, fault-free URL), or fail in bounded time with exit code 3 / ``FAILED`` and a
clear reason. Nothing hangs: every wait below is bounded.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from tests.faults.fault_helpers import Setup, exact_state, mutate_db, start_server
from tests.faults.fault_proxy import (
    ERROR_503,
    FORWARD,
    RESET_AFTER,
    RESET_BEFORE,
    SLOW,
    STALL,
    TRUNCATE,
    FaultProxy,
    Schedule,
    always,
    mixed,
)

FAST_FAIL = {
    "CLOUDKEEP_STORE_TIMEOUT": "1",
    "CLOUDKEEP_STORE_RETRIES": "3",
    "CLOUDKEEP_STORE_RETRY_DEADLINE": "3",
}
PATIENT = {
    "CLOUDKEEP_STORE_TIMEOUT": "1",
    "CLOUDKEEP_STORE_RETRIES": "12",
    "CLOUDKEEP_STORE_RETRY_DEADLINE": "60",
}
# Budget for a failing operation: deadline + one I/O timeout (5 x 1 s) + startup/slack.
FAIL_WITHIN_SECONDS = 25.0


def _port(endpoint: str) -> int:
    return int(urlparse(endpoint).port or 80)


def _small_folder(root: Path, rnd: random.Random) -> None:
    """~6 MiB: a database with its WAL, and a plain file; enough for a few packs."""
    from tests.faults.fault_helpers import make_live_db

    make_live_db(root / "snippets.db", 6, seed=rnd.randint(0, 10**6))
    (root / "notes.bin").write_bytes(rnd.randbytes(2_500_000))


@pytest.fixture
def s3_prefix(s3_server, rng: random.Random) -> tuple[object, str]:  # type: ignore[no-untyped-def]
    return s3_server, f"faults-{rng.randrange(16**8):08x}"


def _setups(tmp_path: Path, s3_prefix, proxy: FaultProxy, env: dict[str, str]):  # type: ignore[no-untyped-def]
    """The same device and repository through the proxy and directly."""
    server, prefix = s3_prefix
    proxied_url = server.url_for(prefix).replace(server.endpoint, proxy.endpoint())
    data = tmp_path / "production"
    proxied = Setup(tmp_path / "via-proxy", data, proxied_url, extra_env=env)
    direct = Setup(tmp_path / "direct", data, server.url_for(prefix))
    proxied.root.mkdir(exist_ok=True)
    direct.root.mkdir(exist_ok=True)
    return proxied, direct


def test_flaky_store_backup_and_restore_finish_and_are_complete(
    tmp_path: Path,
    s3_prefix,
    rng: random.Random,  # type: ignore[no-untyped-def]
) -> None:
    server, _ = s3_prefix
    schedule = Schedule(
        mixed([(37, STALL), (13, TRUNCATE), (11, RESET_AFTER), (9, RESET_BEFORE), (6, ERROR_503)]),
        stall_seconds=30,
    )
    with FaultProxy(_port(server.endpoint), schedule) as proxy:
        proxied, direct = _setups(tmp_path, s3_prefix, proxy, PATIENT)
        _small_folder(proxied.data, rng)
        states = {}
        for round_ in range(2):
            started = time.monotonic()
            done = proxied.run("backup", "--json", timeout=240)
            assert done.returncode == 0, done.stderr
            states[json.loads(done.stdout)["id"]] = exact_state(proxied.data)
            print(f"backup {round_}: {time.monotonic() - started:.1f}s, faults {schedule.counts}")
            mutate_db(proxied.data / "snippets.db", rng, rows=300)
        listed = proxied.run("list", "--json", timeout=120)
        assert listed.returncode == 0, listed.stderr
        assert {b["id"] for b in json.loads(listed.stdout)["iterable"]} == states.keys()
        first, second = sorted(states)
        target = tmp_path / "restored-through-faults"
        done = proxied.run("restore", first, "--target", str(target), timeout=240)
        assert done.returncode == 0, done.stderr
        assert exact_state(target) == states[first]
        injected = sum(v for k, v in schedule.counts.items() if k != FORWARD)
        assert injected >= 10, schedule.counts
        assert {RESET_AFTER, ERROR_503, RESET_BEFORE} <= schedule.counts.keys()
    # Judged without the proxy: everything reported done is stored, byte for byte.
    checked = direct.run("check", "--read-data")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    direct.workspace().restore(second, target=tmp_path / "restored-direct")
    assert exact_state(tmp_path / "restored-direct") == states[second]


def test_slow_link_finishes(tmp_path: Path, s3_prefix, rng: random.Random) -> None:  # type: ignore[no-untyped-def]
    server, _ = s3_prefix
    schedule = Schedule(always(SLOW), slow_bytes_per_second=4 * 1024 * 1024)
    with FaultProxy(_port(server.endpoint), schedule) as proxy:
        proxied, direct = _setups(tmp_path, s3_prefix, proxy, PATIENT)
        _small_folder(proxied.data, rng)
        done = proxied.run("backup", "--json", timeout=120)
        assert done.returncode == 0, done.stderr
        backup_id = json.loads(done.stdout)["id"]
        target = tmp_path / "restored"
        assert proxied.run("restore", backup_id, "--target", str(target)).returncode == 0
        assert exact_state(target) == exact_state(proxied.data)
    assert direct.run("check", "--read-data").returncode == 0


@pytest.mark.parametrize(
    ("name", "decide"),
    [
        ("store answers 503", always(ERROR_503)),
        ("store stalls", always(STALL)),
        ("connections reset", always(RESET_BEFORE)),
        ("store dies mid-backup", "dies after the first pack"),
    ],
)
def test_dead_store_fails_in_bounded_time_with_a_clear_reason(
    tmp_path: Path,
    s3_prefix,
    rng: random.Random,
    name: str,
    decide,  # type: ignore[no-untyped-def]
) -> None:
    server, _ = s3_prefix
    if decide == "dies after the first pack":
        decide = _dies_after_first_pack()
    schedule = Schedule(decide, stall_seconds=60)
    with FaultProxy(_port(server.endpoint), schedule) as proxy:
        proxied, direct = _setups(tmp_path, s3_prefix, proxy, FAST_FAIL)
        _small_folder(proxied.data, rng)
        started = time.monotonic()
        done = proxied.run("backup", timeout=FAIL_WITHIN_SECONDS * 2)
        took = time.monotonic() - started
    assert done.returncode == 3, f"{name}: {done.returncode} {done.stdout} {done.stderr}"
    assert took < FAIL_WITHIN_SECONDS, f"{name}: took {took:.1f}s"
    assert "store unreachable" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) <= 3, done.stderr
    # Nothing half-stored is listed (the repository itself may not have been made:
    # then list says so); what is stored is consistent.
    listed = direct.run("list", "--json")
    if listed.returncode == 0:
        assert json.loads(listed.stdout)["iterable"] == []
    else:
        assert listed.returncode == 1 and "no cloudkeep repository at" in listed.stderr
    if (direct.run("check").returncode) not in (0, 1):  # 1: no repository was created
        raise AssertionError(direct.run("check").stdout)


def test_server_reports_failed_never_completed_when_the_store_dies(
    tmp_path: Path,
    s3_prefix,
    rng: random.Random,  # type: ignore[no-untyped-def]
) -> None:
    server, _ = s3_prefix
    schedule = Schedule(mixed([(6, ERROR_503), (11, RESET_AFTER)]))
    with FaultProxy(_port(server.endpoint), schedule) as proxy:
        proxied, direct = _setups(tmp_path, s3_prefix, proxy, FAST_FAIL)
        proxied.extra_env.update(CLOUDKEEP_STORE_RETRIES="6", CLOUDKEEP_STORE_RETRY_DEADLINE="8")
        _small_folder(proxied.data, rng)
        api = start_server(proxied)
        try:
            with httpx.Client(base_url=api.url, timeout=120) as http:
                # Flaky but alive: the backup completes, and is really stored.
                events = _stream(http, "/backups/create/streamed")
                assert events[-1]["status"] == "COMPLETED", events[-1]
                completed_id = events[-1]["backup"]["id"]
                # Dead store: the backup fails with a reason, in bounded time.
                mutate_db(proxied.data / "snippets.db", rng, rows=300)
                proxied.extra_env.clear()
                schedule.decide = lambda n, _m, _p: ERROR_503
                started = time.monotonic()
                events = _stream(http, "/backups/create/streamed")
                took = time.monotonic() - started
                final = events[-1]
                assert final["status"] == "FAILED", final
                assert "unreachable" in (final.get("reason") or ""), final
                assert not any(e["status"] == "COMPLETED" for e in events)
                assert took < 30, took
                plain = http.post("/backups/create")
                assert plain.status_code == 503, plain.text
                assert plain.headers["content-type"].startswith("text/plain")
        finally:
            api.stop()
    listed = direct.workspace().list()
    assert [b.id for b in listed] == [completed_id]
    assert direct.run("check", "--read-data").returncode == 0


def _dies_after_first_pack():  # type: ignore[no-untyped-def]
    """Forward until one pack was uploaded, then answer 503 to everything."""
    seen = {"pack": False}

    def decide(_number: int, method: str, path: str) -> str:
        if seen["pack"]:
            return ERROR_503
        if method == "PUT" and "/data/" in path:
            seen["pack"] = True
        return FORWARD

    return decide


def _stream(http: httpx.Client, path: str) -> list[dict]:
    events = []
    with http.stream("POST", path, headers={"Accept": "application/x-ndjson"}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.strip():
                events.append(json.loads(line))
    assert events, "no events"
    return events

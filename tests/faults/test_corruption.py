"""Issue item 5: damaged objects in an S3 store, judged through the CLI and the server.

Extends ``tests/engine/test_damage.py`` (Workspace, file store, two backups): here four
backups on the moto S3 server, each with data only it uses, and damage stacked one
kind at a time (flipped byte, truncated pack, missing pack, all index files deleted).
After each, ``check --read-data`` names exactly the damaged backups (we know which from
where we aimed, not from the checker), restoring a damaged backup fails clearly (CLI
exit 2, server ``FAILED`` with a reason, live data untouched) and the others restore
exactly. ``repair-index`` then rebuilds the index from the pack headers.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import httpx

from tests.faults.fault_helpers import Setup, exact_state, start_server


class S3Objects:
    """Raw access to the test bucket's objects, behind cloudkeep's back (boto3)."""

    def __init__(self, endpoint: str, bucket: str, prefix: str) -> None:
        import boto3

        self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        self.bucket = bucket
        self.prefix = prefix

    def keys(self, folder: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/{folder}"
        )
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def put(self, key: str, content: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=content)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)


def _damaged(done) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(re.findall(r"^damaged backup: (\S+)$", done.stdout, re.M))


def test_check_names_exactly_the_damaged_backups_and_repair_rebuilds_the_index(
    tmp_path: Path,
    s3_server,
    rng: random.Random,  # type: ignore[no-untyped-def]
) -> None:
    prefix = f"corrupt-{rng.randrange(16**8):08x}"
    setup = Setup(tmp_path, tmp_path / "production", s3_server.url_for(prefix))
    objects = S3Objects(s3_server.endpoint, s3_server.bucket, prefix)
    setup.data.mkdir()
    (setup.data / "shared.bin").write_bytes(rng.randbytes(1_500_000))
    ids: list[str] = []
    states: dict[str, dict[str, str]] = {}
    own_packs: dict[str, list[str]] = {}
    for number in range(4):
        for old in setup.data.glob("only-*.bin"):
            old.unlink()
        (setup.data / f"only-{number}.bin").write_bytes(rng.randbytes(1_200_000))
        before = set(objects.keys("data/"))
        done = setup.run("backup", "--json")
        assert done.returncode == 0, done.stderr
        backup_id = json.loads(done.stdout)["id"]
        ids.append(backup_id)
        states[backup_id] = exact_state(setup.data)
        own_packs[backup_id] = sorted(set(objects.keys("data/")) - before)
    assert all(own_packs[i] for i in ids[1:]), own_packs
    b0, b1, b2, b3 = ids

    def check_names(expected: set[str], label: str) -> None:
        done = setup.run("check", "--read-data")
        assert done.returncode == (2 if expected else 0), f"{label}: {done.stdout}{done.stderr}"
        assert _damaged(done) == sorted(expected), f"{label}: {done.stdout}"

    def restores(backup_id: str) -> bool:
        target = tmp_path / f"restore-{rng.randrange(10**9)}"
        done = setup.run("restore", backup_id, "--target", str(target))
        if done.returncode == 0:
            assert exact_state(target) == states[backup_id]
            return True
        assert done.returncode == 2, done.stderr  # damage, said in one line
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert not target.exists() or not any(target.iterdir())
        return False

    check_names(set(), "intact")
    # 1. one flipped byte inside the blob area of the pack holding b1's file: its largest
    #    own pack (a writer's first pack is cut at 1 MiB, so the backup's metadata may be
    #    a pack of its own, which the structure check reads)
    key = max(own_packs[b1], key=lambda name: len(objects.get(name)))
    content = bytearray(objects.get(key))
    content[len(content) // 3] ^= 0x01
    objects.put(key, bytes(content))
    check_names({b1}, "flipped byte")
    # 2. a truncated pack only b2 uses: found without reading data too
    key = own_packs[b2][0]
    objects.put(key, objects.get(key)[: len(objects.get(key)) // 2])
    check_names({b1, b2}, "truncated")
    structure = setup.run("check")
    assert _damaged(structure) == [b2], structure.stdout  # the flip needs --read-data
    # 3. the pack of b3's file missing: check names b3 (its restore may still take that
    #    file's content from the live folder, which holds it); then every pack only b3
    #    uses, which leaves its restore nothing to take
    objects.delete(max(own_packs[b3], key=lambda name: len(objects.get(name))))
    check_names({b1, b2, b3}, "missing data")
    for key in own_packs[b3]:
        objects.delete(key)
    check_names({b1, b2, b3}, "missing")
    assert [restores(i) for i in ids] == [True, False, False, False]

    # The server: a damaged backup's restore fails clearly and leaves live data as it was.
    live_before = exact_state(setup.data)
    api = start_server(setup)
    try:
        with httpx.Client(base_url=api.url, timeout=120) as http:
            response = http.post(
                f"/backup/{b2}/restore/streamed", headers={"Accept": "application/x-ndjson"}
            )
            final = json.loads(response.text.strip().splitlines()[-1])
            assert final["status"] == "FAILED", final
            assert "truncated" in final["reason"] or "damaged" in final["reason"], final
            assert exact_state(setup.data) == live_before
            plain = http.post(f"/backup/{b3}/restore")
            assert plain.status_code == 500 and "missing" in plain.text, plain.text
            assert exact_state(setup.data) == live_before
            ok = http.post(f"/backup/{b0}/restore")
            assert ok.status_code == 200, ok.text
            assert exact_state(setup.data) == states[b0]
    finally:
        api.stop()
    assert "Traceback" not in api.output()

    # 4. every index file deleted: every backup is damaged...
    for key in objects.keys("index/"):
        objects.delete(key)
    check_names({b0, b1, b2, b3}, "index deleted")
    assert not restores(b0)
    # ... until the index is rebuilt from the packs' headers.
    repaired = setup.run("repair-index")
    assert repaired.returncode == 0, repaired.stderr
    assert "has no readable header" in repaired.stderr  # the truncated pack
    check_names({b1, b2, b3}, "after repair")
    assert restores(b0)

    # 5. a damaged (not deleted) index file is replaced by the repair too.
    key = objects.keys("index/")[0]
    content = bytearray(objects.get(key))
    content[20] ^= 0xFF
    objects.put(key, bytes(content))
    assert setup.run("check").returncode == 2
    assert setup.run("repair-index").returncode == 0
    check_names({b1, b2, b3}, "after second repair")
    assert restores(b0)

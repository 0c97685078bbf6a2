"""Issue item 8: no plaintext data, passphrase or key leaves where it belongs.

* A database (and a file name, and an uncheckpointed WAL) holding a marker string is
  backed up to a folder store and to S3: no stored object contains the marker in any
  case or encoding tried (raw, upper/lower, UTF-16, hex, base64 at all alignments, URL
  escaping), every object but ``config`` and key files looks like ciphertext (no zstd
  frame, near-8-bit entropy), and the local cache holds no plaintext either.
* The generated repository key and the application-key file are mode 0600.
* Outputs, logs (DEBUG) and error messages of the CLI and the server, on success and on
  failures (wrong passphrase, unreachable store, unknown id) never contain the
  passphrase or the master key; nor do the processes' command lines.
"""

from __future__ import annotations

import base64
import math
import os
import sqlite3
import stat
import urllib.parse
from collections import Counter
from pathlib import Path

import httpx
import zstandard

from tests.faults.fault_helpers import PASSPHRASE, Setup, session_pids, start_server

MARKER = "Zebra-Quokka-7f3a9e-SECRET-MARKER"


def encodings(secret: str) -> list[bytes]:
    """The forms a leaked string could take in a stored object or a log."""
    forms: set[bytes] = set()
    for text in {secret, secret.lower(), secret.upper()}:
        raw = text.encode()
        forms |= {
            raw,
            text.encode("utf-16-le"),
            text.encode("utf-16-be"),
            raw.hex().encode(),
            raw.hex().upper().encode(),
            urllib.parse.quote(text).encode(),
            urllib.parse.quote_plus(text).encode(),
        }
        for shift in range(3):  # base64 of the string at any alignment in a larger text
            for encode in (base64.b64encode, base64.urlsafe_b64encode):
                encoded = encode(b"\x00" * shift + raw)[4:-4]
                forms.add(encoded[: max(8, len(encoded) - 4)])
    return sorted(forms)


def leaks(blob: bytes, forms: list[bytes]) -> list[bytes]:
    lowered = blob.lower()
    return [form for form in forms if form in blob or form.lower() in lowered]


def entropy(data: bytes) -> float:
    counts = Counter(data)
    return -sum(c / len(data) * math.log2(c / len(data)) for c in counts.values())


def _marked_folder(root: Path) -> None:
    root.mkdir(parents=True)
    db = sqlite3.connect(root / "snippets.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")  # the marker stays in the WAL only
    db.execute("CREATE TABLE snippets(id INTEGER PRIMARY KEY, body TEXT)")
    db.executemany(
        "INSERT INTO snippets(body) VALUES (?)", [(f"row {i} " + "x" * 200,) for i in range(2000)]
    )
    db.commit()
    db.execute("INSERT INTO snippets(body) VALUES (?)", (f"the {MARKER} is here",))
    db.commit()
    db.close()  # (closing checkpoints; reopen a writer that keeps the WAL)
    (root / f"notes-{MARKER}.txt").write_text(f"plain file with {MARKER}\n" * 100)
    (root / "sub").mkdir()
    (root / "sub" / "config.json").write_text(f'{{"token": "{MARKER}"}}')


def test_no_object_in_the_store_holds_the_marker(tmp_path: Path, s3_server) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "production"
    _marked_folder(data)
    writer = sqlite3.connect(data / "snippets.db")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("INSERT INTO snippets(body) VALUES (?)", (f"wal only {MARKER.lower()}",))
    writer.commit()  # held open: this row lives in the WAL file only
    try:
        assert MARKER.lower().encode() in (data / "snippets.db-wal").read_bytes()
        file_setup = Setup(tmp_path, data, (tmp_path / "store").as_uri())
        s3_setup = Setup(tmp_path / "s3", data, s3_server.url_for("secrets-marker"))
        s3_setup.root.mkdir()
        for setup in (file_setup, s3_setup):
            done = setup.run("backup")
            assert done.returncode == 0, done.stderr
    finally:
        writer.close()

    forms = encodings(MARKER)
    objects: dict[str, bytes] = {
        str(p.relative_to(tmp_path)): p.read_bytes()
        for p in (tmp_path / "store").rglob("*")
        if p.is_file()
    }
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1")
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=s3_server.bucket, Prefix="secrets-marker/"
    ):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=s3_server.bucket, Key=item["Key"])["Body"].read()
            objects[f"s3:{item['Key']}"] = body
    assert len(objects) >= 10 and any("data/" in name for name in objects)
    for name, content in objects.items():
        assert not leaks(content, forms), f"{name} holds the marker"
        if name.endswith("/config") or "/keys/" in name or "keys/" in name.split("store/")[-1]:
            continue
        if len(content) >= 4096:  # ciphertext: no compression frame, random-looking bytes
            assert entropy(content) > 7.9, (name, entropy(content))
        try:
            plain = zstandard.ZstdDecompressor().decompress(content, max_output_size=1 << 26)
        except zstandard.ZstdError:
            continue
        raise AssertionError(f"{name} is a plain zstd frame ({len(plain)} bytes)")
    # Not in the store's names either (file names live in the sealed manifest).
    assert not any(leaks(name.encode(), forms) for name in objects)
    # The local cache holds sealed copies only, and no scratch copy of the database.
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file():
            assert not leaks(path.read_bytes(), forms), f"cache file {path} holds the marker"


def test_key_files_are_private_and_secrets_never_printed(
    tmp_path: Path,
    s3_server,  # type: ignore[no-untyped-def]
) -> None:
    data = tmp_path / "production"
    _marked_folder(data)
    outputs: list[str] = []
    # 1. No passphrase given: a key is generated, 0600, and its content is never printed.
    generated = Setup(
        tmp_path / "gen",
        data,
        (tmp_path / "gen-store").as_uri(),
        extra_env={"CLOUDKEEP_LOG_LEVEL": "DEBUG"},
    )
    generated.root.mkdir()
    env = generated.env()
    del env["CLOUDKEEP_PASSPHRASE"]
    import subprocess

    def run_gen(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            generated.argv(*args),
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            cwd=generated.root,
        )
        outputs.extend([done.stdout, done.stderr])
        return done

    assert run_gen("backup").returncode == 0
    key_file = generated.root / "config" / "repository.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    generated_key = key_file.read_text().strip()
    assert run_gen("list").returncode == 0
    assert run_gen("app-key", "create").returncode == 0
    app_keys = generated.root / "config" / "app-keys.json"
    assert stat.S_IMODE(app_keys.stat().st_mode) == 0o600
    app_key = outputs.pop(-2).strip()  # shown once, by design; never again below
    assert app_key.startswith("ck_") and app_key not in app_keys.read_text()

    # 2. A passphrase in the environment: success and failure paths, DEBUG logs.
    setup = Setup(
        tmp_path / "pp",
        data,
        s3_server.url_for("secrets-logs"),
        extra_env={"CLOUDKEEP_LOG_LEVEL": "DEBUG"},
    )
    setup.root.mkdir()

    def run(*args: str, **env_over: str) -> int:
        saved = dict(setup.extra_env)
        setup.extra_env.update(env_over)
        try:
            done = setup.run(*args)
        finally:
            setup.extra_env = saved
        outputs.extend([done.stdout, done.stderr])
        return done.returncode

    assert run("backup") == 0
    assert run("check", "--read-data") == 0
    assert run("list", "--json") == 0
    # No such backup (0.1.0_1 would be a unique beginning of the one there).
    assert run("restore", "9.9.9_1", "--target", str(tmp_path / "nope")) == 1
    wrong = PASSPHRASE[::-1] + "-wrong"
    assert run("list", CLOUDKEEP_PASSPHRASE=wrong) == 1
    assert wrong not in "".join(outputs)
    dead_store = "s3://cloudkeep-test/x?endpoint=http://127.0.0.1:9&region=us-east-1"
    saved_store = setup.store
    setup.store = dead_store
    assert run("backup", CLOUDKEEP_STORE_RETRIES="2", CLOUDKEEP_STORE_RETRY_DEADLINE="1") == 3
    setup.store = saved_store
    pass_file = tmp_path / "passfile"
    pass_file.write_text(PASSPHRASE + "\n")
    os.chmod(pass_file, 0o600)
    assert run("--passphrase-file", str(pass_file), "list") in (0, 2)  # option after root

    # 3. The server: DEBUG log, wrong passphrase (511), command lines of its processes.
    master = setup.workspace().repository().key
    api = start_server(setup)
    try:
        members = session_pids(api.process.pid)
        for pid in members:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            assert PASSPHRASE.encode() not in cmdline
        with httpx.Client(base_url=api.url, timeout=120) as http:
            assert http.post("/backups/create").status_code == 200
            outputs.append(http.get("/backups").text)
            outputs.append(http.get("/backup/0.1.0_1").text)
    finally:
        api.stop()
    outputs.append(api.output())
    setup.extra_env["CLOUDKEEP_PASSPHRASE"] = wrong
    bad = start_server(setup)
    try:
        response = httpx.post(f"{bad.url}/backups/create", timeout=60)
        assert response.status_code == 511, response.text
        outputs.append(response.text)
    finally:
        bad.stop()
    outputs.append(bad.output())

    text = "\n".join(outputs).encode()
    secrets = {
        "passphrase": PASSPHRASE,
        "wrong passphrase": wrong,
        "generated key": generated_key,
        "app key": app_key,
        "encryption key (hex)": master.encryption_key.hex(),
        "id key (hex)": master.id_key.hex(),
        "encryption key (base64)": base64.b64encode(master.encryption_key).decode(),
    }
    for what, secret in secrets.items():
        found = leaks(text, encodings(secret))
        assert not found, f"the {what} appears in an output or log"
    assert "Traceback" not in text.decode(errors="replace")

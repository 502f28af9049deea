"""The ``kefu`` command on a fresh embedded database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def kefu(data_dir: Path, *args: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEFU_")}
    env["KEFU_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "kefu.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        input=input_text,
        timeout=120,
    )


def test_db_upgrade_demo_and_user_commands(tmp_path: Path) -> None:
    assert kefu(tmp_path, "db", "upgrade").returncode == 0
    assert (tmp_path / "kefu.db").exists()

    demo = kefu(tmp_path, "demo", "load")
    assert demo.returncode == 0, demo.stderr
    assert "admin" in demo.stdout and "kefu-demo-2026" in demo.stdout
    again = kefu(tmp_path, "demo", "load")  # idempotent
    assert "0 new users" in again.stdout

    created = kefu(
        tmp_path,
        "user",
        "create",
        "li.lei",
        "--name",
        "李雷",
        "--role",
        "agent",
        "--role",
        "supervisor",
        "--password",
        "a-long-password",
    )
    assert created.returncode == 0, created.stderr
    listed = [json.loads(line) for line in kefu(tmp_path, "user", "list", "--json").stdout.splitlines()]
    li = next(u for u in listed if u["username"] == "li.lei")
    assert li["roles"] == ["agent", "supervisor"] and li["display_name"] == "李雷" and li["active"]

    duplicate = kefu(tmp_path, "user", "create", "LI.LEI", "--password", "a-long-password")
    assert duplicate.returncode == 2 and "already in use" in duplicate.stderr
    bad = kefu(tmp_path, "user", "create", "bad name!", "--password", "a-long-password")
    assert bad.returncode == 2 and "username" in bad.stderr
    short = kefu(tmp_path, "user", "create", "shorty", "--password", "short")
    assert short.returncode == 2 and "at least 10" in short.stderr

    assert kefu(tmp_path, "user", "disable", "li.lei").returncode == 0
    listed = [json.loads(line) for line in kefu(tmp_path, "user", "list", "--json").stdout.splitlines()]
    assert not next(u for u in listed if u["username"] == "li.lei")["active"]
    missing = kefu(tmp_path, "user", "disable", "nobody")
    assert missing.returncode == 2 and "no user" in missing.stderr


def test_generated_secret_key_is_private_and_stable(tmp_path: Path) -> None:
    from kefu.settings import Settings

    first = Settings(data_dir=tmp_path).resolved_secret_key
    assert len(first) >= 40
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0
    assert Settings(data_dir=tmp_path).resolved_secret_key == first
    assert "hunter2" not in repr(Settings(data_dir=tmp_path, secret_key="hunter2-hunter2"))

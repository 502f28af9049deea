"""One Settings object, read from ``KEFU_*`` environment variables."""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEFU_", extra="ignore")

    # Where the embedded database, the generated secret key and uploads live.
    data_dir: Path = Path("data")
    # Empty means the embedded SQLite database in ``data_dir``.
    database_url: str = ""
    # Empty means: read ``data_dir/secret_key`` or create it once, so restarts keep sessions valid.
    secret_key: str = Field(default="", repr=False)
    redis_url: str = ""
    base_url: str = "http://127.0.0.1:8000"
    locale: Literal["zh_CN", "en"] = "zh_CN"
    time_zone: str = "Asia/Shanghai"
    # "auto": PostgreSQL LISTEN/NOTIFY on PostgreSQL, Redis when redis_url is set, else in-process.
    event_backend: Literal["auto", "inprocess", "postgres", "redis"] = "auto"
    # Largest request body accepted, in bytes (413 above it).
    max_body_bytes: int = 2 * 1024 * 1024
    session_hours: int = 12
    login_max_failures: int = 10
    login_backoff_seconds: int = 60
    password_reset_minutes: int = 60
    # Run the job worker inside ``kefu serve`` (one per process; claims are safe across processes).
    run_worker: bool = True
    # Outbound mail (password reset links now; the email channel later). Empty host: mail jobs wait
    # in the outbox and retry until a server is configured.
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_username: str = ""
    smtp_password: str = Field(default="", repr=False)
    mail_from: str = "kefu@localhost"
    # Points per knowledge-contribution rule (see kefu.knowledge.points.DEFAULT_RULES), as JSON.
    kb_points: dict[str, int] = Field(default_factory=dict)
    # How often each process checks the index change feed (a published change is searchable
    # everywhere within about this long).
    kb_index_poll_seconds: float = 0.5
    # Largest file that may be attached to a knowledge article.
    kb_attachment_max_bytes: int = 10 * 1024 * 1024
    # The search re-ranker learns from similar questions; retrained at most this often after changes.
    kb_reranker_retrain_seconds: float = 1800
    # Routing's rest rule: after this long continuously on line, a break of routing_rest_break_seconds
    # before the next contact (0 turns the rule off).
    routing_rest_after_seconds: int = 7200
    routing_rest_break_seconds: int = 900
    # An agent who lets this many offers in a row ring out is set to not ready (a break).
    routing_missed_offers_limit: int = 2
    # --- channels: email (owned by the email channel) ---
    # --- end email ---
    # --- channels: chat ---
    # --- end chat ---
    # --- channels: cti/ivr ---
    # --- end cti/ivr ---
    # --- channels: webhooks ---
    # --- end webhooks ---
    log_level: str = "INFO"
    log_json: bool = True

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'kefu.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def secure_cookies(self) -> bool:
        return self.base_url.startswith("https://")

    @property
    def resolved_secret_key(self) -> str:
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            # O_EXCL: when several processes start at once, exactly one writes the key.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
        return path.read_text().strip()


@lru_cache
def get_settings() -> Settings:
    return Settings()

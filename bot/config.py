"""Typed, frozen settings loaded from config.yaml with ``${VAR}`` / ``${VAR:-default}`` expansion.

An unknown key, a wrong type or an enabled channel without its secret raises ``ConfigError``
with one line naming the key, and start-up stops there.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flows.checkin_config import CheckinConfig
from flows.rumor_match import DEFAULT_THRESHOLDS, SHORT_QUERY_CHARS

DEFAULT_CONFIG_PATH = "config.yaml"
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    public_url: str = ""
    """Base URL residents and gateways reach; used for links in messages."""
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    """Reverse proxies (addresses or CIDR networks) whose ``X-Forwarded-For`` is believed: the
    client address is then the rightmost hop that is not one of them (``bot.proxies``).  Empty:
    the peer address is the client, whatever the headers say."""

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> tuple[IPv4Network | IPv6Network, ...]:
        if not isinstance(value, list | tuple):
            raise ValueError("must be a list of IP addresses or networks, e.g. [10.0.0.0/8]")
        networks = []
        for item in value:
            try:
                networks.append(ip_network(str(item)))
            except ValueError as exc:  # "'x' does not appear to be ...", "... has host bits set"
                raise ValueError(str(exc)) from None
        return tuple(networks)


class DatabaseConfig(_Section):
    url: str = "sqlite+aiosqlite:///data/gridbot.db"
    pool_size: int = Field(10, ge=1)
    commit_batch: int = Field(64, ge=1)
    """Most inbound messages handled in one shared transaction (group commit)."""
    commit_lanes: int = Field(1, ge=1)
    """Concurrent group-commit transactions on PostgreSQL (SQLite always uses one writer).  A
    batch costs about six round trips to the server whatever its size, so one lane makes the
    largest batches and the cheapest messages (a process is bound by its one CPU anyway); more
    lanes keep one that waits on a row lock held by another process from holding up the rest."""


class BridgeConfig(_Section):
    enabled: bool = False
    path: str = "/bridge"
    secret: str = ""
    outbound_url: str = ""
    max_clock_skew_s: int = Field(300, ge=0)
    max_body_bytes: int = Field(64 * 1024, ge=1024)


class SimulatorConfig(_Section):
    enabled: bool = True
    path: str = "/sim"


class WeChatMPConfig(_Section):
    enabled: bool = False
    app_id: str = ""
    app_secret: str = ""
    token: str = ""
    encoding_aes_key: str = ""
    message_mode: Literal["plain", "compatible", "safe"] = "compatible"
    """The account's 消息加解密方式 as set in the WeChat console: ``plain`` reads every body as
    plaintext; ``compatible`` reads the encrypted part when the request says ``encrypt_type=aes``
    and the body as plaintext otherwise (WeChat sends both); ``safe`` requires
    ``encoding_aes_key`` and refuses a plaintext body with 403, since the URL signature alone does
    not cover the body."""
    api_base: str = "https://api.weixin.qq.com"
    path: str = "/wechat/mp"
    max_clock_skew_s: int = Field(300, ge=0)
    fallback_template_id: str = ""
    """Template message sent instead when a customer-service message is refused as outside the
    48-hour window (45015) or over its count (45047); empty: no template fallback."""
    fallback_template_field: str = "content"
    """The template's data field that carries the text (cut to 200 characters)."""
    fallback_subscribe_template_id: str = ""
    """Subscribe message (bizsend) used the same way when no template is configured."""
    fallback_subscribe_field: str = "thing1"
    """The subscribe template's field that carries the text (cut to 20 characters)."""
    fallback_page: str = ""
    """Link (template ``url``, subscribe ``page``) the fallback message opens, if any."""


class WeComConfig(_Section):
    enabled: bool = False
    corp_id: str = ""
    agent_id: int = 0
    secret: str = ""
    token: str = ""
    encoding_aes_key: str = ""
    api_base: str = "https://qyapi.weixin.qq.com"
    robot_base: str = "https://qyapi.weixin.qq.com"
    path: str = "/wechat/wecom"
    max_clock_skew_s: int = Field(300, ge=0)


class ChannelsConfig(_Section):
    bridge: BridgeConfig = BridgeConfig()
    simulator: SimulatorConfig = SimulatorConfig()
    wechat_mp: WeChatMPConfig = WeChatMPConfig()
    wecom: WeComConfig = WeComConfig()


class OutboxConfig(_Section):
    batch_size: int = Field(200, ge=1)
    poll_interval_s: float = Field(0.5, gt=0)
    max_attempts: int = Field(8, ge=1)
    backoff_base_s: float = Field(2.0, gt=0)
    backoff_max_s: float = Field(3600.0, gt=0)
    claim_timeout_s: int = Field(300, ge=10)
    """A row left in ``sending`` longer than this (its worker died) is looked at again."""
    default_rate_per_minute: int = Field(600, ge=1)
    robot_rate_per_minute: int = Field(20, ge=1)
    send_concurrency: int = Field(32, ge=1)


class ConversationConfig(_Section):
    expiry_minutes: int = Field(30, ge=1)
    reply_budget_s: float = Field(4.0, gt=0)


class PrivacyConfig(_Section):
    retention_days: int = Field(180, ge=1)
    """Inbound message logs, check-in answers and delivered payloads older than this are purged."""


class SchedulerConfig(_Section):
    enabled: bool = True
    misfire_grace_s: int = Field(3600, ge=1)


class RequestDeadline(_Section):
    """Minutes a handler has to accept a request, and to resolve it once filed."""

    accept_minutes: int = Field(ge=1)
    resolve_minutes: int = Field(ge=1)


class CategoryDeadlines(_Section):
    urgent: RequestDeadline
    normal: RequestDeadline


def _deadlines(urgent: tuple[int, int], normal: tuple[int, int]) -> CategoryDeadlines:
    return CategoryDeadlines(
        urgent=RequestDeadline(accept_minutes=urgent[0], resolve_minutes=urgent[1]),
        normal=RequestDeadline(accept_minutes=normal[0], resolve_minutes=normal[1]),
    )


class RequestDeadlines(_Section):
    """Deadlines per category and urgency.  Each level a request escalates to gets the same
    window again (the accept window while nobody accepted it, else the resolve window)."""

    supplies: CategoryDeadlines = _deadlines((60, 480), (240, 1440))
    medical: CategoryDeadlines = _deadlines((30, 240), (120, 1440))
    daily: CategoryDeadlines = _deadlines((60, 720), (240, 2880))
    complaint: CategoryDeadlines = _deadlines((120, 1440), (480, 4320))
    suggestion: CategoryDeadlines = _deadlines((480, 4320), (1440, 10080))
    other: CategoryDeadlines = _deadlines((120, 1440), (480, 4320))


class RequestsConfig(_Section):
    """Residents' requests (诉求): deadlines, the deadline sweep, chat lists."""

    deadlines: RequestDeadlines = RequestDeadlines()
    auto_close_days: int = Field(7, ge=1)
    """A resolved request the resident neither confirms nor reopens is closed after this."""
    sweep_interval_s: int = Field(60, ge=1)
    sweep_batch: int = Field(10000, ge=1, le=20000)
    """Requests escalated per page: one transaction, and on PostgreSQL one statement."""
    sweep_workers: int = Field(2, ge=1, le=8)
    """Pages the sweep escalates at once on PostgreSQL (each claims its requests with SKIP
    LOCKED, so they never wait on each other); SQLite always runs one."""
    max_description: int = Field(500, ge=10)
    list_limit: int = Field(10, ge=1, le=50)
    """Requests shown by the chat lists (我的诉求, 待办, 督办)."""


_CLOCK = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class NoticesConfig(_Section):
    """Notices (通知): quiet hours, sizes, the queuing job, resend spacing, text limits."""

    quiet_hours: bool = True
    """Hold non-urgent notices queued between ``quiet_start`` and ``quiet_end`` (local time)
    until ``quiet_end``."""
    quiet_start: str = "22:00"
    quiet_end: str = "07:00"
    max_text_chars: int = Field(1500, ge=10)
    queue_page_size: int = Field(20000, ge=100)
    """Recipients queued per statement and transaction (bounds lock time and memory)."""
    inline_max_targets: int = Field(5000, ge=0)
    """A notice sent now from chat to at most this many recipients is queued while answering;
    a larger one is queued by the job within ``poll_interval_s``."""
    poll_interval_s: int = Field(15, ge=1)
    """How often the job looks for scheduled notices that are due."""
    lease_s: int = Field(300, ge=10)
    """A notice being queued by a process that died is taken over after this."""
    resend_min_interval_s: int = Field(600, ge=0)
    """Reminders of one notice to those who have not acknowledged are at least this far apart."""
    group_purposes: tuple[str, ...] = ("residents",)
    """Chat groups (by ``purpose``) that notices go to."""
    max_length: dict[str, int] = Field(default_factory=dict)
    """Overrides of the per-channel text limits in ``flows.notices`` (keys ``channel`` or
    ``channel:kind``; the unit, characters or UTF-8 bytes, stays the channel's)."""
    part_gap_s: float = Field(2.0, ge=0)
    """A notice split for a channel's length limit: each part is due this much after the last."""
    receipts_shown: int = Field(5, ge=1, le=20)

    @field_validator("quiet_start", "quiet_end")
    @classmethod
    def _clock_time(cls, value: str) -> str:
        if not _CLOCK.match(value):
            raise ValueError(f"{value!r} is not a time of day like 22:00")
        return value

    @field_validator("max_length")
    @classmethod
    def _usable_lengths(cls, value: dict[str, int]) -> dict[str, int]:
        for key, size in value.items():
            if size < 50:
                raise ValueError(f"{key}: {size} is too short to carry a notice (at least 50)")
        return value


class RumorsConfig(_Section):
    """Rumor clarification: match thresholds, grouping of unanswered questions, reports."""

    answer_threshold: float = Field(DEFAULT_THRESHOLDS.answer, gt=0, le=1)
    """A clarification scoring at least this (claim coverage, 0-1) is answered outright."""
    suggest_threshold: float = Field(DEFAULT_THRESHOLDS.suggest, gt=0, le=1)
    """Clarifications scoring at least this are offered as numbered suggestions."""
    max_suggestions: int = Field(DEFAULT_THRESHOLDS.max_suggestions, ge=1, le=9)
    forward_min_chars: int = Field(30, ge=5)
    """A direct message at least this long, without a command, is read as a forwarded post."""
    fallback_min_chars: int = Field(6, ge=SHORT_QUERY_CHARS + 1)
    """A shorter direct message that no command took, with at least this many Chinese
    characters, letters or digits, is matched too, and answered only when the matcher is
    sure; otherwise it gets the usual "not understood" reply and is not queued for review.
    Six is the shortest claim of two-character words (大蒜/预防/感染, 超市/明天/停业), while
    courtesies (谢谢, 好的收到, 知道了谢谢) are shorter; at SHORT_QUERY_CHARS or fewer the matcher
    never answers anyway, and at or above ``forward_min_chars`` this never happens."""
    group_similarity: float = Field(0.6, gt=0, le=1)
    """Unanswered questions whose heads share at least this share of character bigrams
    (Jaccard) are grouped into one review item."""
    group_window_days: int = Field(30, ge=1)
    """Only review items asked about within this many days take new questions."""
    group_candidates: int = Field(500, ge=1, le=5000)
    """Most recently asked pending items compared with a new unanswered question."""
    report_days: int = Field(7, ge=1, le=366)
    report_limit: int = Field(10, ge=1, le=100)
    """Claims listed by "谣言榜" and the report endpoint (each of answered and unanswered)."""
    notify_page_size: int = Field(1000, ge=1, le=20000)
    """People notified per statement when a clarification is published or corrected."""
    max_explanation_chars: int = Field(1000, ge=50, le=4000)

    @model_validator(mode="after")
    def _suggest_below_answer(self) -> RumorsConfig:
        if self.suggest_threshold > self.answer_threshold:
            raise ValueError("suggest_threshold must not exceed answer_threshold")
        return self


class ConsoleConfig(_Section):
    """The web console for wardens, doctors and admins (``bot.console``)."""

    enabled: bool = True
    path: str = "/console"
    """URL prefix of every console page."""
    session_key: str = ""
    """Fernet key (32 url-safe base64-encoded bytes) that signs and encrypts session cookies.
    Empty: a key is made per process, so sessions end at restart and do not span processes."""
    session_max_age_s: int = Field(8 * 3600, ge=60)
    """A login lasts this long; then the user signs in again."""
    secure_cookie: bool = False
    """Send the session cookie over HTTPS only (set it behind TLS)."""
    login_window_s: int = Field(900, ge=10)
    max_failures_per_account: int = Field(5, ge=1)
    """Failed logins of one account within the window before it is refused for a while."""
    max_failures_per_address: int = Field(20, ge=1)
    """Failed logins from one client address within the window (any account)."""
    page_size: int = Field(50, ge=5, le=500)
    """Rows per page of long tables (check-in board, audit log)."""

    @field_validator("path")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/") or value.endswith("/") or len(value) < 2:
            raise ValueError("must start with / and not end with / (e.g. /console)")
        return value

    @field_validator("session_key")
    @classmethod
    def _fernet_key(cls, value: str) -> str:
        if not value:
            return value
        try:
            raw = base64.urlsafe_b64decode(value.encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raw = b""
        if len(raw) != 32:
            raise ValueError(
                "must be a Fernet key: 32 bytes in url-safe base64 (44 characters); make one "
                "with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'"
            )
        return value


class Config(_Section):
    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    timezone: str = "Asia/Shanghai"
    channels: ChannelsConfig = ChannelsConfig()
    outbox: OutboxConfig = OutboxConfig()
    conversation: ConversationConfig = ConversationConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    notices: NoticesConfig = NoticesConfig()
    requests: RequestsConfig = RequestsConfig()
    checkin: CheckinConfig = CheckinConfig()
    rumors: RumorsConfig = RumorsConfig()
    console: ConsoleConfig = ConsoleConfig()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _enabled_channels_have_secrets(self) -> Config:
        required = {
            "bridge": ("secret",),
            "wechat_mp": ("app_id", "app_secret", "token"),
            "wecom": ("corp_id", "secret", "token", "encoding_aes_key"),
        }
        for name, keys in required.items():
            section = getattr(self.channels, name)
            if not section.enabled:
                continue
            for key in keys:
                if not getattr(section, key):
                    raise ConfigError(
                        f"channels.{name}.{key}: required when the channel is enabled"
                    )
        mp = self.channels.wechat_mp
        if mp.enabled and mp.message_mode == "safe" and not mp.encoding_aes_key:
            raise ConfigError("channels.wechat_mp.encoding_aes_key: required in safe message_mode")
        return self

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def expand_env(value: Any, environ: dict[str, str] | os._Environ[str] = os.environ) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of a parsed YAML tree."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise ConfigError(f"environment variable {name} is not set (used as ${{{name}}})")

        return _ENV_PATTERN.sub(substitute, value)
    if isinstance(value, dict):
        return {k: expand_env(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, environ) for v in value]
    return value


def parse_config(data: dict[str, Any] | None) -> Config:
    """Validate a parsed mapping; the first problem becomes one ``ConfigError`` line."""
    try:
        return Config.model_validate(expand_env(data or {}))
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        ctx_error = (error.get("ctx") or {}).get("error")
        if isinstance(ctx_error, ConfigError):
            raise ctx_error from None
        reason = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        raise ConfigError(f"{key or 'config'}: {reason}") from None


def load_config(path: str | Path | None = None) -> Config:
    """Load the file named by ``path``, else ``$GRIDBOT_CONFIG``, else ``config.yaml``."""
    path = Path(path or os.environ.get("GRIDBOT_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return parse_config(data)

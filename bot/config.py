"""Typed, frozen settings loaded from config.yaml with ``${VAR}`` / ``${VAR:-default}`` expansion.

An unknown key, a wrong type or an enabled channel without its secret raises ``ConfigError``
with one line naming the key, and start-up stops there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


class DatabaseConfig(_Section):
    url: str = "sqlite+aiosqlite:///data/gridbot.db"
    pool_size: int = Field(10, ge=1)
    commit_batch: int = Field(64, ge=1)
    """Most inbound messages handled in one shared transaction (group commit)."""
    commit_lanes: int = Field(4, ge=1)
    """Concurrent group-commit transactions on PostgreSQL (SQLite always uses one writer)."""


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
    api_base: str = "https://api.weixin.qq.com"
    path: str = "/wechat/mp"
    max_clock_skew_s: int = Field(300, ge=0)


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


class Config(_Section):
    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    timezone: str = "Asia/Shanghai"
    channels: ChannelsConfig = ChannelsConfig()
    outbox: OutboxConfig = OutboxConfig()
    conversation: ConversationConfig = ConversationConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
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

"""Settings: typed, frozen, strict about keys, ${VAR} expansion; the shipped file runs as-is."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from bot.config import Config, ConfigError, expand_env, load_config, parse_config

SHIPPED = Path(__file__).resolve().parent.parent / "config.yaml"
ENV_USED_BY_SHIPPED = (
    "GRIDBOT_HOST",
    "GRIDBOT_DATABASE_URL",
    "GRIDBOT_BRIDGE_SECRET",
    "WECHAT_MP_APP_ID",
    "WECHAT_MP_APP_SECRET",
    "WECHAT_MP_TOKEN",
    "WECHAT_MP_AES_KEY",
    "WECOM_CORP_ID",
    "WECOM_SECRET",
    "WECOM_TOKEN",
    "WECOM_AES_KEY",
    "GRIDBOT_CONSOLE_KEY",
)


def error_of(data) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"sever": {}}, "sever"),
        ({"server": {"prot": 1}}, "server.prot"),
        ({"channels": {"wecom": {"corpid": "x"}}}, "channels.wecom.corpid"),
        ({"outbox": {"batch_size": 100, "retries": 3}}, "outbox.retries"),
    ],
)
def test_unknown_key_is_named(data, key):
    assert error_of(data) == f"{key}: unknown key"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"server": {"port": "http"}}, "server.port"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"database": {"pool_size": 0}}, "database.pool_size"),
        ({"channels": {"simulator": {"enabled": "perhaps"}}}, "channels.simulator.enabled"),
        ({"outbox": {"poll_interval_s": [1]}}, "outbox.poll_interval_s"),
        ({"log_level": "LOUD"}, "log_level"),
        ({"timezone": "Asia/Atlantis"}, "timezone"),
        ({"channels": "bridge"}, "channels"),
        ({"rumors": {"fallback_min_chars": "six"}}, "rumors.fallback_min_chars"),
        ({"rumors": {"fallback_min_chars": 2}}, "rumors.fallback_min_chars"),
    ],
)
def test_wrong_type_is_named(data, key):
    assert error_of(data).startswith(f"{key}: ")


@pytest.mark.parametrize(
    ("channel", "settings", "missing"),
    [
        ("bridge", {}, "secret"),
        ("wechat_mp", {"app_id": "wx1", "token": "t"}, "app_secret"),
        ("wechat_mp", {"app_secret": "s", "token": "t"}, "app_id"),
        ("wecom", {"corp_id": "ww1", "secret": "s", "token": "t"}, "encoding_aes_key"),
        ("wecom", {"corp_id": "ww1", "token": "t", "encoding_aes_key": "k"}, "secret"),
        (
            "wechat_mp",
            {"app_id": "wx1", "app_secret": "s", "token": "t", "message_mode": "safe"},
            "encoding_aes_key",
        ),
    ],
)
def test_enabled_channel_without_its_secret_is_named(channel, settings, missing):
    data = {"channels": {channel: {"enabled": True, **settings}}}
    assert error_of(data).startswith(f"channels.{channel}.{missing}: ")
    # The same section, disabled, is fine: a secret is only needed to run the channel.
    disabled = parse_config({"channels": {channel: {**settings, "enabled": False}}})
    assert getattr(disabled.channels, channel).enabled is False


@pytest.mark.parametrize(
    ("proxies", "shown"),
    [
        (["10.0.0.0/33"], "10.0.0.0/33"),
        (["10.0.0.1/8"], "has host bits set"),
        (["127.0.0.1", "nginx"], "'nginx'"),
        (["fe80::/10", "2001:db8::1/129"], "2001:db8::1/129"),
        ("10.0.0.0/8", "must be a list"),
        ([8], "'8'"),
    ],
)
def test_bad_trusted_proxy_is_refused_naming_the_key(proxies, shown):
    message = error_of({"server": {"trusted_proxies": proxies}})
    assert message.startswith("server.trusted_proxies: ")
    assert shown in message


def test_trusted_proxies_are_networks_and_none_by_default():
    assert parse_config({}).server.trusted_proxies == ()
    config = parse_config({"server": {"trusted_proxies": ["10.0.0.0/8", "127.0.0.1", "::1"]}})
    assert config.server.trusted_proxies == (
        IPv4Network("10.0.0.0/8"),
        IPv4Network("127.0.0.1/32"),
        IPv6Network("::1/128"),
    )


def test_enabled_channels_with_secrets_load():
    config = parse_config(
        {
            "channels": {
                "bridge": {"enabled": True, "secret": "s3"},
                "wechat_mp": {"enabled": True, "app_id": "wx1", "app_secret": "a", "token": "t"},
                "wecom": {
                    "enabled": True,
                    "corp_id": "ww1",
                    "secret": "s",
                    "token": "t",
                    "encoding_aes_key": "k" * 43,
                    "agent_id": "1000002",
                },
            }
        }
    )
    assert config.channels.bridge.secret == "s3"
    assert config.channels.wecom.agent_id == 1000002


def test_env_expansion(monkeypatch):
    monkeypatch.setenv("GB_TEST_SECRET", "from-env")
    monkeypatch.setenv("GB_TEST_PORT", "9090")
    monkeypatch.delenv("GB_TEST_UNSET", raising=False)
    config = parse_config(
        {
            "server": {"port": "${GB_TEST_PORT}", "host": "${GB_TEST_UNSET:-0.0.0.0}"},
            "database": {"url": "sqlite+aiosqlite:///${GB_TEST_UNSET:-data}/x-${GB_TEST_PORT}.db"},
            "channels": {"bridge": {"enabled": True, "secret": "${GB_TEST_SECRET:-fallback}"}},
        }
    )
    assert config.server.port == 9090
    assert config.server.host == "0.0.0.0"
    assert config.database.url == "sqlite+aiosqlite:///data/x-9090.db"
    assert config.channels.bridge.secret == "from-env"

    # An empty default is allowed; an unset variable without one is an error naming it.
    assert expand_env({"a": ["${GB_TEST_UNSET:-}"]}) == {"a": [""]}
    message = error_of({"channels": {"bridge": {"secret": "${GB_TEST_UNSET}"}}})
    assert "GB_TEST_UNSET" in message
    # An empty variable counts as set: ${VAR:-default} keeps the empty value, like the shell's
    # ${VAR-default}; the enabled bridge then reports its missing secret.
    monkeypatch.setenv("GB_TEST_EMPTY", "")
    message = error_of({"channels": {"bridge": {"enabled": True, "secret": "${GB_TEST_EMPTY}"}}})
    assert message.startswith("channels.bridge.secret: ")


def test_gridbot_config_selects_the_file(tmp_path, monkeypatch):
    chosen = tmp_path / "chosen.yaml"
    chosen.write_text(yaml.safe_dump({"server": {"port": 8181}}), encoding="utf-8")
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"server": {"port": 8282}}), encoding="utf-8")
    monkeypatch.setenv("GRIDBOT_CONFIG", str(chosen))
    assert load_config().server.port == 8181
    # An explicit path (``--config``) wins over the variable.
    assert load_config(other).server.port == 8282
    monkeypatch.setenv("GRIDBOT_CONFIG", str(tmp_path / "absent.yaml"))
    with pytest.raises(ConfigError, match=r"absent\.yaml"):
        load_config()


def test_empty_file_gives_defaults_and_non_mapping_is_refused(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n", encoding="utf-8")
    assert load_config(empty) == Config()
    listed = tmp_path / "list.yaml"
    listed.write_text("- server\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listed)


def test_shipped_config_loads_as_is(monkeypatch):
    for name in ENV_USED_BY_SHIPPED:
        monkeypatch.delenv(name, raising=False)
    config = load_config(SHIPPED)
    assert config.database.url == "sqlite+aiosqlite:///data/gridbot.db"
    assert config.server.host == "127.0.0.1"
    assert config.timezone == "Asia/Shanghai"
    assert config.channels.simulator.enabled is True
    assert config.channels.simulator.path == "/sim"
    assert not config.channels.bridge.enabled
    assert not config.channels.wechat_mp.enabled
    assert not config.channels.wecom.enabled
    assert config.scheduler.misfire_grace_s == 3600
    # Every section the code knows is present in the shipped file, so it documents them all.
    shipped_keys = set(yaml.safe_load(SHIPPED.read_text(encoding="utf-8")))
    assert shipped_keys == set(Config.model_fields)

    monkeypatch.setenv("GRIDBOT_DATABASE_URL", "postgresql+asyncpg://u@db:5432/gridbot")
    assert load_config(SHIPPED).database.url == "postgresql+asyncpg://u@db:5432/gridbot"


def test_settings_are_frozen():
    config = parse_config({"server": {"port": 8081}})
    with pytest.raises(ValidationError):
        config.server.port = 9000  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.timezone = "UTC"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.channels.bridge.secret = "stolen"  # type: ignore[misc]
    assert config.server.port == 8081
    assert config.tz.key == "Asia/Shanghai"

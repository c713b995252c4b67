"""Settings: one table, parsed the same from flags and from ECHOD_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from echod.cli import load_config
from echod.config import (
    OPTIONS,
    Config,
    ConfigError,
    byte_size,
    from_environment,
    options_markdown,
    port_number,
)


def test_every_option_has_a_flag_an_env_var_and_help() -> None:
    for option in OPTIONS:
        assert option.flag.startswith("--")
        assert option.env == "ECHOD_" + option.name.upper()
        assert option.help
        assert option.name in Config.__dataclass_fields__


def test_defaults_serve_rfc_862s_port_on_loopback() -> None:
    config = load_config([], {}).config
    assert config.addresses == ("127.0.0.1:7",)
    assert config.backlog >= 1024


def test_environment_sets_options_and_flags_win() -> None:
    env = {"ECHOD_PORT": "6000", "ECHOD_BACKEND": "poll", "ECHOD_HIGH_WATER": "1M"}
    config = load_config(["--port", "7000"], env).config
    assert config.port == 7000
    assert config.backend == "poll"
    assert config.high_water == 1 << 20


def test_listen_is_repeatable_and_replaces_host_and_port() -> None:
    config = load_config(["--listen", "127.0.0.1:1", "--listen", "[::1]:2"], {}).config
    assert config.addresses == ("127.0.0.1:1", "[::1]:2")
    assert from_environment({"ECHOD_LISTEN": "a:1 unix:/x"})["listen"] == ("a:1", "unix:/x")


def test_ipv6_host_is_bracketed_in_its_address() -> None:
    assert Config(host="::1", port=5).addresses == ("[::1]:5",)


@pytest.mark.parametrize(
    ("text", "value"), [("0", 0), ("512", 512), ("64K", 65536), ("2m", 2 << 20)]
)
def test_sizes_take_binary_suffixes(text: str, value: int) -> None:
    assert byte_size(text) == value


@pytest.mark.parametrize("text", ["-1", "65536", "http", ""])
def test_bad_ports_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(ConfigError):
        port_number(text)


def test_a_bad_variable_is_named_in_the_error() -> None:
    with pytest.raises(ConfigError, match="ECHOD_PORT='x'"):
        from_environment({"ECHOD_PORT": "x"})


def test_low_water_above_high_water_is_refused() -> None:
    with pytest.raises(ConfigError, match="low water"):
        Config(high_water=1000, low_water=2000)


def test_the_readme_option_table_is_the_one_the_code_builds() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("<!-- options:start", 1)[1].split("-->", 1)[1]
    block = block.split("<!-- options:end -->", 1)[0].strip()
    assert block == options_markdown(), "README options drifted; paste:\n" + options_markdown()

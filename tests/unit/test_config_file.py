"""``--config FILE``: TOML whose keys are the option table's names, below flags and ECHOD_*."""

from __future__ import annotations

from pathlib import Path

import pytest

from echod.cli import load_config
from echod.config import OPTIONS, ConfigError, from_file


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "echod.toml"
    path.write_text(text)
    return str(path)


def test_keys_are_option_names_and_values_their_flag_text_or_native_toml(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'listen = ["127.0.0.1:1", "udp:[::1]:2"]\nhigh_water = "1M"\nlow_water = 4096\n'
        'workers = "auto"\ngraceful_timeout = 2.5\nidle_timeout = 3\nlisten_mode = "shared"\n'
        'udp_rate = "10/1K"\nudp_refuse_ports = "53,123"\n',
    )
    values = from_file(path)
    assert values["listen"] == ("127.0.0.1:1", "udp:[::1]:2")
    assert values["high_water"] == 1 << 20 and values["low_water"] == 4096
    assert values["graceful_timeout"] == 2.5 and values["idle_timeout"] == 3.0
    assert values["workers"] >= 1 and values["listen_mode"] == "shared"
    assert values["udp_rate"] == (10.0, 1024) and values["udp_refuse_ports"] == (53, 123)


def test_a_single_listen_string_is_a_list_of_one(tmp_path: Path) -> None:
    assert from_file(write(tmp_path, 'listen = "127.0.0.1:9"\n'))["listen"] == ("127.0.0.1:9",)


def test_every_option_can_be_written_in_the_file(tmp_path: Path) -> None:
    # The file, the flags and the environment are one table: no option is left out.
    for option in OPTIONS:
        if option.default not in (None, ()):
            text = option.shown_default.replace("—", "")
            if text:
                assert option.name in from_file(write(tmp_path, f'{option.name} = "{text}"\n'))


def test_flags_beat_the_environment_which_beats_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'port = 1\nbackend = "poll"\nbacklog = 10\n')
    settings = load_config(["--config", path, "--port", "3"], {"ECHOD_BACKEND": "select"})
    assert (settings.config.port, settings.config.backend, settings.config.backlog) == (
        3,
        "select",
        10,
    )
    # A file key something else overrides is reported: a reload cannot change it.
    assert settings.overridden == ("backend", "port")
    assert settings.config_file == path


def test_echod_config_names_the_file_too(tmp_path: Path) -> None:
    path = write(tmp_path, "backlog = 12\n")
    assert load_config([], {"ECHOD_CONFIG": path}).config.backlog == 12


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prot = 5000\n", "unknown key 'prot' (did you mean 'port'?)"),
        ('port = "http"\n', "port: 'http' is not a whole number"),
        ("port = 70000\n", "port: port 70000 is out of range"),
        ("workers = true\n", "workers: expected a string or a number, not a TOML boolean"),
        ("listen = [[1]]\n", "listen: expected a string or a number, not a TOML list"),
        ('log_level = "loud"\n', "log_level: choose from debug, info, warning, error"),
        ("port = \n", "not valid TOML"),
        ("[table]\nport = 1\n", "unknown key 'table'"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_file_and_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        from_file(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        from_file(str(tmp_path / "absent.toml"))

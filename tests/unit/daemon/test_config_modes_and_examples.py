"""daemon.socket_mode's one reading (octal strings, octal integers, decimal refused), exclude
patterns checked one by one, and both shipped example configurations load."""

from __future__ import annotations

from pathlib import Path

import pytest
from cairn.daemon.runtime.config import ConfigError, load_config

SYSTEMD = Path(__file__).resolve().parents[3] / "systemd"


def load_with(tmp_path: Path, daemon: str = "", source: str = ""):
    path = tmp_path / "c.toml"
    text = f'[repository]\npath = "/r"\n[daemon]\n{daemon}\n'
    if source:
        text += f'[[source]]\nname = "a"\npaths = ["/srv"]\n{source}\n'
    path.write_text(text)
    return load_config(str(path))


@pytest.mark.parametrize("value, mode", [('"0660"', 0o660), ('"660"', 0o660), ('"0o640"', 0o640),
                                         ("0o660", 0o660), ("0o600", 0o600), ('"0600"', 0o600)])
def test_socket_mode_octal_forms(tmp_path, value, mode):
    assert load_with(tmp_path, f"socket_mode = {value}").daemon.socket_mode == mode


@pytest.mark.parametrize("value", ["660", "600", "777", "1000", "400", "440", "444", "500", "432", "0", "7",
                                   "+432"])
def test_decimal_socket_mode_is_an_error_not_another_mode(tmp_path, value):
    # Small decimals too: 400 would be mode 0o620, 432 the same integer as 0o660. Only the
    # literal tells them apart, so every decimal literal is refused.
    with pytest.raises(ConfigError) as info:
        load_with(tmp_path, f"socket_mode = {value}")
    assert f"daemon.socket_mode: {int(value)} is not a file mode" in info.value.message
    assert '"0660"' in info.value.message and "0o660" in info.value.message


@pytest.mark.parametrize("text", ["daemon.socket_mode = 0o640", "daemon = { socket_mode = 0o640 }"])
def test_octal_socket_mode_in_dotted_and_inline_tables(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(f'{text}\n[repository]\npath = "/r"\n')
    assert load_config(str(path)).daemon.socket_mode == 0o640


def test_decimal_socket_mode_in_an_inline_table_is_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('daemon = { socket_mode = 440 }\n[repository]\npath = "/r"\n')
    with pytest.raises(ConfigError, match="daemon.socket_mode: 440 is not a file mode"):
        load_config(str(path))


@pytest.mark.parametrize("value", ['"0999"', '"06600"', '"rw-rw----"', "-1", "true", "0o1777"])
def test_malformed_socket_mode(tmp_path, value):
    with pytest.raises(ConfigError, match="daemon.socket_mode: expected a file mode"):
        load_with(tmp_path, f"socket_mode = {value}")


def test_exclude_pattern_that_does_not_parse_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"source\[0\]\.exclude\[2\]: pattern '\\' does not parse"):
        load_with(tmp_path, source='exclude = ["*.tmp", "cache/", "\\\\"]')
    assert load_with(tmp_path, source='exclude = ["*.tmp", "cache/", "!keep"]').sources[0].exclude[2] == "!keep"


@pytest.mark.parametrize("name", ["cairnd.toml.example", "cairnd-minimal.toml"])
def test_shipped_examples_load(name):
    config = load_config(str(SYSTEMD / name))
    assert config.sources and config.daemon.socket_mode == 0o660


def test_minimal_example_is_one_local_source():
    config = load_config(str(SYSTEMD / "cairnd-minimal.toml"))
    assert [s.paths for s in config.sources] == [("/etc",)]
    assert config.repository.path == "/var/lib/cairn/repo" and not config.databases

"""restore-db refuses a blank --target-time, --target-lsn or --target-timeline (a script's
`--target-time "$T"` with T unset) with exit 2 and one line, before it asks the daemon anything
or writes anything: left out, each would silently mean the set's own point."""

from __future__ import annotations

from pathlib import Path

import pytest
from cairn.client import cli


def restore_db(tmp_path: Path, *extra: str) -> list[str]:
    return ["--socket", str(tmp_path / "no-daemon.sock"), "restore-db", "S", "--database", "appdb",
            "--target", str(tmp_path / "data"), *extra]


@pytest.mark.parametrize("option", ["--target-time", "--target-lsn", "--target-timeline"])
@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_a_blank_target_value_is_refused_before_anything(tmp_path: Path, option: str, blank: str, capsys) -> None:
    code = cli.main(restore_db(tmp_path, f"{option}={blank}"))
    err = capsys.readouterr().err.splitlines()
    assert code == cli.EXIT_USAGE, err
    assert err == [f"cairn: error: {option} was given a blank value (an unset variable?): give a value, or leave "
                   f"{option} out to recover to the set's own "
                   f"{'timeline' if option == '--target-timeline' else 'consistent point'}"], err
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("option", ["--target-time", "--target-lsn"])
def test_a_blank_target_is_refused_for_a_dump_restored_into_a_database_too(tmp_path: Path, option: str,
                                                                          capsys) -> None:
    code = cli.main(["--socket", str(tmp_path / "no-daemon.sock"), "restore-db", "S", "--database", "d",
                     "--target-dsn", "dbname=x", option, ""])
    assert code == cli.EXIT_USAGE
    assert f"{option} was given a blank value" in capsys.readouterr().err


def test_a_target_value_goes_on_to_the_daemon(tmp_path: Path, capsys) -> None:
    """The control: with values the command gets as far as asking the daemon (none runs here)."""
    code = cli.main(restore_db(tmp_path, "--target-time", "2025-03-01 12:00:00+01", "--target-timeline", "latest"))
    err = capsys.readouterr().err
    assert code == cli.EXIT_FAILURE and "unable to reach cairnd" in err, err


@pytest.mark.parametrize("other", [["--target-time", "2030-01-01 00:00:00+00"], ["--target-lsn", "FF/0"]])
def test_target_end_goes_with_no_other_target(tmp_path: Path, other: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(restore_db(tmp_path, "--target-end", *other))
    assert exc.value.code == cli.EXIT_USAGE
    assert f"argument {other[0]}: not allowed with argument --target-end" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()

"""The `cairn` parser: a command's options may come before or after its positional arguments,
`--` ends the options (what follows is positional, also a word beginning with '-'), and what
no command knows is still a one-line usage error (exit 2)."""

from __future__ import annotations

import argparse

import pytest
from cairn.client import cli


def parse(*argv: str) -> dict[str, object]:
    ns = cli.build_parser().parse_args(list(argv))
    return {k: v for k, v in vars(ns).items() if k != "func"}


@pytest.mark.parametrize("argv", [
    ("ls", "latest", "--source", "app", "docs"),
    ("ls", "--source", "app", "latest", "docs"),
    ("ls", "latest", "docs", "--source", "app"),
    ("ls", "-r", "latest", "--source=app", "docs"),
])
def test_ls_takes_its_path_before_or_after_options(argv: tuple[str, ...]) -> None:
    got = parse(*argv)
    assert (got["set"], got["path"], got["source"]) == ("latest", "docs", "app")


def test_ls_without_a_path_lists_the_root() -> None:
    assert parse("ls", "latest", "--source", "app")["path"] == ""


def test_restore_paths_around_options_and_after_double_dash() -> None:
    got = parse("restore", "S", "a", "--target", "D", "b", "--include", "x", "c")
    assert (got["set"], got["paths"], got["target"], got["include"]) == ("S", ["a", "b", "c"], "D", ["x"])
    got = parse("restore", "S", "--target", "D", "--", "-dash-named", "--delta")
    assert got["paths"] == ["-dash-named", "--delta"] and got["delta"] is False
    got = parse("restore", "--target", "D", "--delta", "--", "-set-like", "-p")
    assert (got["set"], got["paths"], got["delta"]) == ("-set-like", ["-p"], True)
    assert parse("restore", "S", "--target", "D", "--", "--json")["json"] is False  # a path, not the switch


@pytest.mark.parametrize("argv,want", [
    (("copy", "A", "--to", "/x", "B", "--to-key-file", "k"), ("sets", ["A", "B"])),
    (("diff", "A", "--source", "app", "B"), ("set_b", "B")),
    (("key", "remove", "--", "-abc"), ("id", "-abc")),
    (("wal-fetch", "--prefetch", "0", "000000010000000000000001", "--", "-dest"), ("dest", "-dest")),
    (("check-db", "db", "--timeout", "5"), ("name", "db")),
])
def test_every_command_with_positionals_mixes_them_with_options(argv: tuple[str, ...], want: tuple) -> None:
    assert parse(*argv)[want[0]] == want[1]


def test_commands_without_positionals_and_nested_commands_parse_as_before() -> None:
    assert parse("prune", "--keep-last", "3")["keep_last"] == 3
    assert parse("repair", "index", "--dry-run")["dry_run"] is True
    assert parse("--json", "sets")["json"] is True and parse("sets", "--json")["json"] is True


@pytest.mark.parametrize("argv,message", [
    (("restore", "S", "--target", "D", "--bogus"), "unrecognized arguments: --bogus"),
    (("restore", "S", "--target", "D", "-dash-named"), "unrecognized arguments: -dash-named"),
    (("ls", "latest", "a", "b"), "unrecognized arguments: b"),
    (("sets", "extra"), "unrecognized arguments: extra"),
    (("prune", "--", "x"), "unrecognized arguments: x"),
    (("restore", "S"), "the following arguments are required: --target"),
    (("restore", "--target", "D"), "the following arguments are required: SET, PATH"),
    (("key", "add"), "one of the arguments --passphrase-file --new-key-file is required"),
    # argparse reads a value beginning with '-' as an option: say how to give it
    (("prune", "--keep-within", "-5d"),
     "argument --keep-within: expected one argument (a value beginning with '-' is given as --keep-within=VALUE)"),
    (("restore", "S", "--target", "-dir"),
     "argument --target: expected one argument (a value beginning with '-' is given as --target=VALUE)"),
])
def test_what_no_command_takes_is_a_usage_error(argv: tuple[str, ...], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(list(argv))
    assert exc.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"cairn: error: {message}", err
    assert len(err) == 2 and err[1].startswith("hint: see 'cairn"), err


def test_help_still_names_the_positionals(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["restore", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "SET [PATH ...]" in out and "after -- when one begins with '-'" in out


def _commands() -> list[str]:
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


@pytest.mark.parametrize("command", _commands())
def test_every_command_prints_its_help_as_written(command: str, capsys) -> None:
    """`cairn CMD --help` exits 0 whatever its metavars hold (a '%' once made argparse fail on
    the usage line), and shows PostgreSQL's placeholders as users copy them (%p, not %%p)."""
    with pytest.raises(SystemExit) as stop:
        cli.build_parser().parse_args([command, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and "%%" not in out
    if command == "wal-push":
        assert "'cairn wal-push %p'" in out


@pytest.mark.parametrize("argv", [
    ("ls", "\udcff"),
    ("sets", "--source", "\udcfe"),
    ("restore", "latest", "--target", "/t", "--host", "\udcff"),
    ("diff", "latest", "ab\udcffcd"),
])
def test_a_name_that_is_not_utf8_is_a_usage_error_not_a_traceback(argv, capsys) -> None:
    """Set references, sources and hosts travel as protobuf strings: a byte that is not UTF-8
    (argparse hands it over as a surrogate) is refused while parsing, with exit 2."""
    with pytest.raises(SystemExit) as e:
        cli.main(["--socket", "/nonexistent", *argv])
    assert e.value.code == 2
    assert "is not valid UTF-8" in capsys.readouterr().err


def test_a_path_that_is_not_utf8_is_still_a_path() -> None:
    assert parse("restore", "latest", "--target", "/t\udcff", "a\udcfe")["paths"] == ["a\udcfe"]

"""`cairnd --check-config`: the start's checks without a start. A file the daemon would refuse is
the same one line and exit 1, having created nothing; a good one is exit 0 and a line saying
the repository opens, also while a daemon runs on that very configuration (checked before a
reload)."""

from __future__ import annotations

import os
import subprocess

from cairnd_harness import CAIRND, env_for


def run_cairnd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CAIRND, *args], capture_output=True, text=True, timeout=30, env=env_for())


def _config(tmp_path, rundir, *, passphrase_file: str, src: str, extra: str = "") -> str:
    path = tmp_path / "cairnd.toml"
    path.write_text(f'[repository]\npath = "{tmp_path / "repo"}"\npassphrase_file = "{passphrase_file}"\n\n'
                    f'[daemon]\nsocket = "{rundir}/cairnd.sock"\nstate_dir = "{tmp_path / "state"}"\n\n'
                    f'[[source]]\nname = "app"\npaths = ["{src}"]\nwatch = false\n{extra}')
    return str(path)


def test_check_config_refuses_what_a_start_refuses_and_passes_a_good_file(tmp_path, rundir, start_daemon):
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    passphrase = tmp_path / "repo.pass"
    passphrase.write_text("correct horse\n")
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("battery staple\n")
    r = run_cairnd("--repo", str(tmp_path / "repo"), "--init", "--passphrase-file", str(passphrase))
    assert r.returncode == 0, r.stderr
    good = dict(passphrase_file=str(passphrase), src=str(src))
    cases = [
        (dict(good, extra="watchh = true\n"), f"invalid config '{tmp_path / 'cairnd.toml'}': unknown key "
                                               "'source[0].watchh'"),
        (dict(good, extra='keep = { last = 0 }\n'), "source[0].keep: every rule is 0"),
        (dict(good, extra='schedule = { full = "0 0 31 2 *" }\n'), "source[0].schedule.full: invalid cron "
                                                                    "expression '0 0 31 2 *': it never matches"),
        (dict(good, passphrase_file=str(tmp_path / "missing.pass")),
         f"unable to read passphrase file '{tmp_path / 'missing.pass'}': No such file or directory "
         f"(repository.passphrase_file in '{tmp_path / 'cairnd.toml'}', line 3)"),
        (dict(good, passphrase_file=str(wrong)), "unable to open repository: wrong passphrase or key file"),
        (dict(good, src=str(tmp_path / "gone")), f"source 'app': path '{tmp_path / 'gone'}' does not exist"),
    ]
    for values, text in cases:
        config = _config(tmp_path, rundir, **values)
        r = run_cairnd("--config", config, "--check-config")
        lines = r.stderr.splitlines()
        assert r.returncode == 1 and r.stdout == "" and len(lines) == 1, (values, r.returncode, r.stdout, r.stderr)
        assert lines[0].startswith("cairnd: error: ") and text in lines[0], (values, r.stderr)
    # nothing was created by any check: no state directory, no socket
    assert not (tmp_path / "state").exists() and not os.path.exists(os.path.join(rundir, "cairnd.sock"))

    config = _config(tmp_path, rundir, **good)
    r = run_cairnd("--config", config, "--check-config")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout == (f"configuration '{config}' is valid: repository '{tmp_path / 'repo'}' opens; "
                        "1 source, 0 databases\n")
    assert not (tmp_path / "state").exists()

    # a directory in two sources is taken (a cold and a hot source of one tree), and warned of
    inner = f'\n[[source]]\nname = "data"\npaths = ["{src / "data"}"]\n'
    overlap = _config(tmp_path, rundir, **dict(good, extra=inner))
    r = run_cairnd("--config", overlap, "--check-config")
    assert r.returncode == 0 and "is valid" in r.stdout, r.stderr
    assert r.stderr.startswith("cairnd: warning: source[1].paths[0]: ") and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "state").exists()
    config = _config(tmp_path, rundir, **good)

    # with the daemon serving on it (the socket is taken, the repository and state directory locked)
    start_daemon("--config", config, socket_path=os.path.join(rundir, "cairnd.sock"))
    r = run_cairnd("--config", config, "--check-config")
    assert r.returncode == 0 and "is valid" in r.stdout, r.stderr
    # a flag that replaces the file's key is named as the flag
    r = run_cairnd("--config", config, "--check-config", "--passphrase-file", str(tmp_path / "gone.pass"))
    assert r.returncode == 1 and r.stderr.rstrip().endswith("No such file or directory (--passphrase-file)"), r.stderr
    r = run_cairnd("--config", config, "--check-config", "--init")
    assert r.returncode == 2 and "--check-config does not go with it" in r.stderr, r.stderr

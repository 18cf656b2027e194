"""The claim a client shows before the daemon writes a restore-db target itself
(restoredb.check_claim): only an otherwise empty, real directory holding the right nonce in a
file made by root or the daemon's own user qualifies; everything else is refused before any
write."""

from __future__ import annotations

import os
import pwd

import pytest
from cairn.daemon.databases.postgres import restoredb
from cairn.errors import FailedPreconditionError

NONCE = "ab" * 16


def claim_dir(tmp_path, nonce: str = NONCE, content: str | None = None) -> str:
    d = tmp_path / "target"
    d.mkdir()
    (d / f".cairn-claim-{nonce}").write_text(content if content is not None else nonce)
    return str(d)


def test_a_good_claim_passes_and_write_local_removes_it(tmp_path) -> None:
    d = claim_dir(tmp_path)
    assert restoredb.check_claim(d, NONCE) == os.path.join(d, f".cairn-claim-{NONCE}")
    from cairn.fsio.records import Data, EntryMeta

    recs = iter([EntryMeta(path=b"PG_VERSION", kind="file", mode=0o600, size=3), Data(b"15\n")])
    st = restoredb.write_local(recs, d, NONCE)
    assert st.files == 1 and os.listdir(d) == ["PG_VERSION"]


@pytest.mark.parametrize("case", ["wrong content", "extra file", "malformed", "relative", "symlink", "missing"])
def test_bad_claims_are_refused(tmp_path, case: str) -> None:
    d = claim_dir(tmp_path, content="other" if case == "wrong content" else None)
    nonce = NONCE
    if case == "extra file":
        open(os.path.join(d, "postgresql.conf"), "w").close()
    elif case == "malformed":
        nonce = "../../etc"
    elif case == "relative":
        d = os.path.relpath(d)
    elif case == "symlink":
        link = str(tmp_path / "link")
        os.symlink(d, link)
        d = link
    elif case == "missing":
        d = str(tmp_path / "nowhere")
    with pytest.raises(FailedPreconditionError, match="local write"):
        restoredb.check_claim(d, nonce)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a claim owned by another user")
def test_a_claim_by_a_less_privileged_user_is_refused(tmp_path) -> None:
    d = claim_dir(tmp_path)
    nobody = pwd.getpwnam("nobody")
    os.chown(os.path.join(d, f".cairn-claim-{NONCE}"), nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(FailedPreconditionError, match="neither root nor"):
        restoredb.check_claim(d, NONCE)
    assert os.listdir(d) == [f".cairn-claim-{NONCE}"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_target_the_daemon_cannot_write_is_refused_before_writing(tmp_path) -> None:
    d = claim_dir(tmp_path)
    os.chmod(d, 0o500)
    try:
        with pytest.raises(FailedPreconditionError, match="cannot write there"):
            restoredb.write_local(iter([]), d, NONCE)
    finally:
        os.chmod(d, 0o700)


def test_write_local_stops_when_the_client_goes_away(tmp_path) -> None:
    from cairn.fsio.records import Data, EntryMeta

    d = claim_dir(tmp_path)

    def records():
        for i in range(1000):
            yield EntryMeta(path=f"f{i}".encode(), kind="file", mode=0o600, size=1)
            yield Data(b"x")

    st = restoredb.write_local(records(), d, NONCE, cancelled=lambda: True)
    assert st.errors[-1] == "the client went away: the restore is incomplete"
    assert 0 < len(os.listdir(d)) < 1000


def test_a_file_cut_off_when_the_client_goes_away_is_not_left_looking_complete(tmp_path) -> None:
    """The stream stops in the middle of a file's content: that file is removed, not extended
    with zeros to its size and given the set's mode and mtime (which `--delta --quick` would
    then take for whole)."""
    from cairn.fsio.records import Data, EntryMeta

    d = claim_dir(tmp_path)

    def records():
        for i in range(127):  # records 0..253
            yield EntryMeta(path=f"f{i}".encode(), kind="file", mode=0o644, size=1, mtime_ns=10**18)
            yield Data(b"x")
        yield EntryMeta(path=b"big", kind="file", mode=0o644, size=100_000, mtime_ns=10**18)  # record 254
        yield Data(b"y" * 1000)  # record 255: the client is found gone after it
        yield Data(b"y" * 99_000)

    st = restoredb.write_local(records(), d, NONCE, cancelled=lambda: True)
    assert st.errors[-1] == "the client went away: the restore is incomplete"
    assert not os.path.exists(os.path.join(d, "big")), os.stat(os.path.join(d, "big"))
    assert all(os.path.getsize(os.path.join(d, n)) == 1 for n in os.listdir(d))

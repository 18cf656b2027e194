"""The daemon writing a WAL segment into the prefetcher's claim file (cairn.fsio.claims.open_claimed_file,
walarchive.write_wal_into): only into the file the client proved, never through a link or into
another file, and never leaving part of a segment behind."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
from cairn.daemon.databases.postgres import walarchive
from cairn.fsio.claims import CLAIM_PREFIX, open_claimed_file
from cairn.store.errors import CorruptionError, FailedPreconditionError, NotFoundError
from cairn.store.repository import Repository

SEG = "000000010000000000000009"


def long_header(sysid: int) -> bytes:
    """The start of a segment: XLogLongPageHeaderData with XLP_LONG_HEADER, xlp_sysid, 16 MiB, 8 kB."""
    return ((0xD110).to_bytes(2, "little") + (2).to_bytes(2, "little") + bytes(20) + sysid.to_bytes(8, "little")
            + (16 << 20).to_bytes(4, "little") + (8192).to_bytes(4, "little") + bytes(24))


def claim(tmp_path: Path, nonce: str | None = None, content: str | None = None) -> tuple[str, str]:
    nonce = nonce or secrets.token_hex(16)
    path = tmp_path / f".{SEG}.tmp{CLAIM_PREFIX}{nonce}"
    path.write_text(nonce if content is None else content)
    return str(path), nonce


def write(repo: Repository, path: str, nonce: str, namespace: str = "42") -> int:
    fd = open_claimed_file(path, nonce)
    try:
        return walarchive.write_wal_into(repo, SEG, namespace, fd)
    finally:
        os.close(fd)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init_local(str(tmp_path / "repo"))


def test_the_segment_is_written_into_the_claim_file(repo: Repository, tmp_path: Path) -> None:
    body = long_header(42) + os.urandom(3 << 20)
    repo.put_wal(SEG, body, "42")
    path, nonce = claim(tmp_path)
    assert write(repo, path, nonce) == len(body)
    assert Path(path).read_bytes() == body


def test_a_claim_that_is_not_the_clients_own_is_refused(repo: Repository, tmp_path: Path) -> None:
    repo.put_wal(SEG, long_header(42) + b"x" * 5000, "42")
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    path, nonce = claim(tmp_path)
    cases = {
        "wrong content": lambda: claim(tmp_path, content="0" * 32),
        "malformed nonce": lambda: (path, "not-hex"),
        "not named for the claim": lambda: (str(victim), nonce),
        "relative path": lambda: (os.path.relpath(path), nonce),
    }
    for what, make in cases.items():
        p, n = make()
        with pytest.raises(FailedPreconditionError, match="local write to .* refused"):
            write(repo, p, n)
        assert victim.read_bytes() == b"keep me", what
    # a link named for the claim, to a file holding the nonce: never followed
    target = tmp_path / "target"
    link_nonce = secrets.token_hex(16)
    target.write_text(link_nonce)
    link = tmp_path / f"l{CLAIM_PREFIX}{link_nonce}"
    link.symlink_to(target)
    with pytest.raises(FailedPreconditionError, match="refused"):
        write(repo, str(link), link_nonce)
    assert target.read_text() == link_nonce
    # a second link to the claim file (another path would change too)
    path2, nonce2 = claim(tmp_path)
    os.link(path2, tmp_path / "other-name")
    with pytest.raises(FailedPreconditionError, match="one link"):
        write(repo, path2, nonce2)
    # a claim file of another user: such a client could name a file it cannot write
    path3, nonce3 = claim(tmp_path)
    os.chown(path3, 65534, 65534)
    if os.geteuid() == 0:
        with pytest.raises(FailedPreconditionError, match="neither root nor the daemon's user"):
            write(repo, path3, nonce3)
        assert Path(path3).read_text() == nonce3


def test_damage_leaves_the_claim_file_empty(repo: Repository, tmp_path: Path) -> None:
    body = long_header(42) + os.urandom(1 << 20)
    repo.put_wal(SEG, body, "42")

    class Damaged:  # the pieces arrive, then the whole does not match its catalog entry
        def stream_wal_entry(self, name: str, namespace: str = ""):
            found, pieces = repo.stream_wal_entry(name, namespace)

            def bad():
                yield from pieces
                raise CorruptionError(f"unable to read WAL file '{name}': checksum mismatch")
            return found, bad()

    path, nonce = claim(tmp_path)
    with pytest.raises(CorruptionError, match="checksum mismatch"):
        write(Damaged(), path, nonce)  # type: ignore[arg-type]
    assert Path(path).stat().st_size == 0


def test_another_servers_flat_segment_is_refused_before_any_byte(repo: Repository, tmp_path: Path) -> None:
    repo.put_wal(SEG, long_header(7) + os.urandom(20000))  # a flat entry of an older archive, server 7
    path, nonce = claim(tmp_path)
    with pytest.raises(NotFoundError, match="belongs to system 7"):
        write(repo, path, nonce, namespace="42")
    assert Path(path).stat().st_size == 0
    repo.put_wal(SEG, long_header(42) + b"tail", "42")  # its own name space wins
    path, nonce = claim(tmp_path)
    assert write(repo, path, nonce, namespace="42") == len(long_header(42)) + 4


def test_a_delta_claim_is_checked_on_the_directory_and_the_file(tmp_path: Path) -> None:
    from cairn.fsio.claims import check_delta_claim

    target = tmp_path / "app"
    (target / "sub").mkdir(parents=True)
    (target / "keep.txt").write_text("anything may be there")
    nonce = secrets.token_hex(16)
    (target / f"{CLAIM_PREFIX}{nonce}").write_text(nonce)
    assert check_delta_claim(str(target), nonce) == str(target / f"{CLAIM_PREFIX}{nonce}")
    (tmp_path / "link").symlink_to(target)  # a link to the claimed directory: never followed
    with pytest.raises(FailedPreconditionError, match="not a directory"):
        check_delta_claim(str(tmp_path / "link"), nonce)
    with pytest.raises(FailedPreconditionError, match="refused"):
        check_delta_claim(str(target / "sub"), nonce)  # no claim there
    other = nonce[:-1] + ("0" if nonce[-1] != "0" else "1")
    with pytest.raises(FailedPreconditionError, match="refused: No such file"):
        check_delta_claim(str(target), other)  # the claim is named for its nonce
    (target / f"{CLAIM_PREFIX}{other}").write_text(nonce)
    with pytest.raises(FailedPreconditionError, match="claim does not match"):
        check_delta_claim(str(target), other)
    if os.geteuid() == 0:  # a directory of another user (an application's, as a whole-set restore leaves it)
        os.chown(target, 65534, 65534)
        with pytest.raises(FailedPreconditionError, match="neither root nor the daemon's user"):
            check_delta_claim(str(target), nonce)
        assert check_delta_claim(str(target), nonce, any_owner=True)  # a root client: the daemon may
        os.chown(target / f"{CLAIM_PREFIX}{nonce}", 65534, 65534)  # a client that is that user
        with pytest.raises(FailedPreconditionError):
            check_delta_claim(str(target), nonce, any_owner=True)


def test_an_entry_holding_another_segment_is_refused_before_a_byte_is_written(repo: Repository,
                                                                              tmp_path: Path) -> None:
    """A catalog entry whose page header is another segment's (swapped names in a repository that
    does not bind entries to their names) never reaches recovery: the claim file stays empty."""
    seg_size = 16 << 20
    other = 0x0A  # SEG is segment 9: its entry holds segment 10's first page
    header = ((0xD110).to_bytes(2, "little") + (2).to_bytes(2, "little") + (1).to_bytes(4, "little")
              + (other * seg_size).to_bytes(8, "little") + bytes(8) + (42).to_bytes(8, "little")
              + seg_size.to_bytes(4, "little") + (8192).to_bytes(4, "little"))
    repo.put_wal(SEG, header + os.urandom(3 << 20), "42")
    path, nonce = claim(tmp_path)
    with pytest.raises(CorruptionError, match="its first page belongs to segment 00000001000000000000000A"):
        write(repo, path, nonce)
    assert Path(path).stat().st_size == 0

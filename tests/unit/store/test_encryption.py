"""Encryption at rest (format 2): nothing readable in the repository, every changed byte found,
keys wrap one master key, wrong secrets refused clearly, format 1 unchanged."""

from __future__ import annotations

import os
import random

import blake3
import pytest
from cairn.store.content import crypto
from cairn.store.errors import CairnError, CorruptionError, FailedPreconditionError, NotFoundError, WrongKeyError
from cairn.store.model import BackupRequest
from cairn.store.repository import Repository
from cairn.store.storage.backend import KINDS, LocalBackend, MemoryBackend
from storekit import assert_same_tree

FAST = {"memory_kib": 1024, "iterations": 1, "lanes": 1}  # Argon2id kept cheap for tests
MARK = "zqxmarker"
WAL_NAME = "000000010000000000000007"


def _secret(word: str = "correct horse battery staple") -> crypto.Secret:
    return crypto.Secret("passphrase", word.encode())


def _marked_tree(root, rng: random.Random) -> None:
    """Names and contents carrying the marker; contents incompressible around it."""
    d = root / f"dir-{MARK}-names"
    d.mkdir(parents=True)
    for i in range(6):
        body = rng.randbytes(3000) + f"content-{MARK}-{i}".encode() + rng.randbytes(3000)
        (d / f"file-{MARK}-{i}.txt").write_bytes(body)
    (root / f"big-{MARK}.bin").write_bytes(rng.randbytes(700_000) + f"tail-{MARK}".encode() * 3)
    os.symlink(f"target-{MARK}", root / f"link-{MARK}")


def _fill(repo: Repository, src, host: str) -> None:
    """A set of `src` with a database attachment named after the marker, and a WAL file."""
    db = src.parent / f"pgdata-{MARK}"
    (db / "base").mkdir(parents=True, exist_ok=True)
    (db / "base" / f"rel-{MARK}").write_bytes(random.Random(5).randbytes(5000) + f"row-{MARK}".encode())
    req = BackupRequest(source=f"db-{MARK}", paths=(str(src),), hostname=host, tags=(f"tag-{MARK}",))
    with repo.session(req) as sess:
        sess.attach(f"db:{MARK}db", str(db))
        sess.commit()
    repo.put_wal(WAL_NAME, f"wal-{MARK}".encode() + bytes(1000))


def _all_bytes(root: str) -> list[tuple[str, bytes]]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out.append((p, fh.read()))
    return out


def _leaks(root: str, needles: list[bytes]) -> list[str]:
    return [f"{p}: {n!r}" for p, data in _all_bytes(root) for n in needles
            if n in data or n in os.fsencode(p)]


@pytest.mark.parametrize("encrypted", [True, False])
def test_no_plaintext_path_content_or_host_in_any_repository_file(tmp_path, encrypted):
    src = tmp_path / "src"
    _marked_tree(src, random.Random(7))
    path = str(tmp_path / "repo")
    repo = Repository.init(LocalBackend(path), secret=_secret() if encrypted else None, argon2=FAST)
    host = f"host{MARK}x"
    _fill(repo, src, host)
    with repo.locks.hold("backup"):  # a lock held now names this host in its content
        needles = [MARK.encode(), host.encode(), os.fsencode(src)]
        if len(os.uname().nodename) >= 6:  # a shorter name turns up by chance in random bytes
            needles.append(os.uname().nodename.encode())
        leaks = _leaks(path, needles)
    repo.close()
    if encrypted:
        assert leaks == []
    else:  # the same grep finds them in a format 1 repository: the check can fail
        assert any(MARK.encode() in n.encode() for n in leaks)


def _encrypted_repo(backend, src) -> Repository:
    repo = Repository.init(backend, secret=_secret(), argon2=FAST)
    _fill(repo, src, "somehost")
    return repo


def test_repository_restores_from_a_fresh_handle_with_only_the_passphrase(tmp_path):
    src = tmp_path / "src"
    _marked_tree(src, random.Random(1))
    path = str(tmp_path / "repo")
    _encrypted_repo(LocalBackend(path), src).close()
    repo = Repository.open_local(path, read_only=True, secret=_secret())
    assert repo.config.version == 2 and repo.encrypted
    s = repo.get_set("latest")
    assert s.hostname == "somehost" and s.source == f"db-{MARK}"
    repo.restore(s, str(tmp_path / "out"))
    assert_same_tree(str(src), str(tmp_path / "out"))
    assert repo.get_wal(WAL_NAME) == f"wal-{MARK}".encode() + bytes(1000)
    assert repo.check(read_data=True).ok


def test_ids_are_keyed_and_chunker_seed_is_secret_per_repository(tmp_path):
    src = tmp_path / "src"
    _marked_tree(src, random.Random(2))
    a = _encrypted_repo(MemoryBackend(), src)
    b = _encrypted_repo(MemoryBackend(), src)
    plain = Repository.init(MemoryBackend())
    _fill(plain, src, "h")
    ids_a = {bid for bid, _ in a.index.items()}
    ids_b = {bid for bid, _ in b.index.items()}
    ids_plain = {bid for bid, _ in plain.index.items()}
    assert ids_a and not ids_a & ids_b and not ids_a & ids_plain
    content = (src / f"dir-{MARK}-names" / f"file-{MARK}-0.txt").read_bytes()
    assert blake3.blake3(content).digest() in ids_plain  # format 1 ids stay plain blake3
    assert a.key.blob_id(content) in ids_a
    assert a.config.chunker.seed not in (0, b.config.chunker.seed)
    assert Repository.open(a.raw_backend, secret=_secret()).config.chunker.seed == a.config.chunker.seed
    assert b'"seed": 0' in a.raw_backend.get("config", "config")  # never the real seed on disk


def _objects(backend: MemoryBackend) -> list[tuple[str, str]]:
    return [(k, n) for k in KINDS for n in backend.list(k)]


def test_a_flipped_byte_in_any_object_is_detected(tmp_path):
    src = tmp_path / "src"
    _marked_tree(src, random.Random(3))
    base = MemoryBackend()
    _encrypted_repo(base, src).close()
    objects = _objects(base)
    assert {k for k, _ in objects} >= {"config", "keys", "packs", "index", "sets", "wal"}
    rng = random.Random(11)
    trials = 0
    for kind, name in objects:
        data = base.get(kind, name)
        for pos in sorted({0, len(data) // 2, len(data) - 1, rng.randrange(len(data))}):
            damaged = MemoryBackend()
            for k, n in objects:
                damaged.put(k, n, base.get(k, n))
            flipped = bytearray(data)
            flipped[pos] ^= 0x40
            damaged.put(kind, name, bytes(flipped))
            trials += 1
            try:
                repo = Repository.open(damaged, secret=_secret())
            except CairnError:
                continue  # config or the only key damaged: refused at open
            report = repo.check(read_data=True)
            found = not report.ok or len(repo.list_sets()) != 1 or repo.index_problems
            if kind == "wal" and not found:
                with pytest.raises(CorruptionError):
                    repo.get_wal(WAL_NAME)
                found = True
            assert found, f"flipped byte {pos} of {kind}/{name} went unnoticed"
    assert trials >= 4 * 4


def test_restore_of_a_damaged_blob_fails_with_a_clear_message(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "good.bin").write_bytes(random.Random(4).randbytes(5000))
    (src / "d" / "bad.bin").write_bytes(random.Random(5).randbytes(9000))
    backend = MemoryBackend()
    repo = Repository.init(backend, secret=_secret(), argon2=FAST)
    s = repo.backup(BackupRequest(source="s", paths=(str(src),)))
    content = (src / "d" / "bad.bin").read_bytes()
    loc = repo.index.get(repo.key.blob_id(content))
    pack = bytearray(backend.get("packs", loc.pack))
    pack[loc.offset + loc.stored_len // 2] ^= 1
    backend.put("packs", loc.pack, bytes(pack))
    fresh = Repository.open(backend, secret=_secret())
    stats = fresh.restore(fresh.get_set(s.id), str(tmp_path / "out"))
    assert len(stats.errors) == 1
    assert "bad.bin" in str(stats.errors[0]) and "authentication failed" in str(stats.errors[0])
    report = fresh.check(read_data=True)
    assert not report.ok and any("authentication failed" in p.message or "checksum" in p.message
                                 for p in report.errors)


def test_wrong_or_missing_secret_is_one_clear_error(tmp_path):
    backend = MemoryBackend()
    Repository.init(backend, secret=_secret(), argon2=FAST).close()
    with pytest.raises(WrongKeyError) as info:
        Repository.open(backend, secret=_secret("not the passphrase"))
    assert str(info.value) == "unable to open repository: wrong passphrase or key file"
    with pytest.raises(WrongKeyError) as info:
        Repository.open(backend, secret=crypto.Secret.new_key_file())
    assert str(info.value) == crypto.WRONG_KEY
    with pytest.raises(WrongKeyError) as info:
        Repository.open(backend)
    assert "encrypted" in str(info.value) and "\n" not in str(info.value)


def test_key_add_list_remove_and_last_key_refusal(tmp_path):
    backend = MemoryBackend()
    repo = Repository.init(backend, secret=_secret(), argon2=FAST)
    src = tmp_path / "src"
    _marked_tree(src, random.Random(6))
    s = repo.backup(BackupRequest(source="s", paths=(str(src),)))
    first = repo.key_id
    with pytest.raises(FailedPreconditionError, match="last usable key"):
        repo.remove_key(first)
    keyfile = crypto.Secret.new_key_file()
    added = repo.add_key(keyfile)
    second = repo.add_key(_secret("another one"), argon2=FAST)
    keys = repo.list_keys()
    assert sorted(k for _i, k, _p in keys) == sorted([first, added, second])
    assert {i.type for i, _k, _p in keys} == {"passphrase", "keyfile"}
    with pytest.raises(FailedPreconditionError, match="opened with"):
        repo.remove_key(first[:10])
    with pytest.raises(NotFoundError):
        repo.remove_key("ffff0000ffff")
    # open with the key file, remove the first passphrase: it no longer opens, the others do
    by_file = Repository.open(backend, secret=keyfile)
    assert by_file.key_id == added and by_file.remove_key(first) == first
    with pytest.raises(WrongKeyError):
        Repository.open(backend, secret=_secret())
    other = Repository.open(backend, secret=_secret("another one"))
    other.restore(other.get_set(s.id), str(tmp_path / "out"))
    assert_same_tree(str(src), str(tmp_path / "out"))
    assert other.remove_key(added) == added
    with pytest.raises(FailedPreconditionError, match="last usable key"):
        other.remove_key(second)
    assert [k for _i, k, _p in other.list_keys()] == [second]


def test_a_damaged_key_object_does_not_count_as_usable(tmp_path):
    backend = MemoryBackend()
    repo = Repository.init(backend, secret=_secret(), argon2=FAST)
    spare = repo.add_key(crypto.Secret.new_key_file())
    backend.put("keys", spare, b"{broken")
    problems = [p for _i, k, p in repo.list_keys() if k == spare]
    assert problems and "not a valid key object" in problems[0]
    report = repo.check()
    assert report.ok and [w.object_id for w in report.warnings] == [spare]
    with pytest.raises(FailedPreconditionError, match="last usable key"):
        Repository.open(backend, secret=_secret()).remove_key(repo.key_id)


def test_key_files_round_trip_and_bad_ones_are_refused(tmp_path):
    s = crypto.Secret.new_key_file()
    p = tmp_path / "k"
    p.write_bytes(crypto.encode_key_file(s.value))
    assert crypto.Secret.from_key_file(str(p)) == s
    p.write_bytes(b"not base64 of 32 bytes")
    with pytest.raises(CairnError, match="not a Cairn key file"):
        crypto.Secret.from_key_file(str(p))
    (tmp_path / "pw").write_bytes(b"hunter2\r\nsecond line\n")
    assert crypto.Secret.from_passphrase_file(str(tmp_path / "pw")).value == b"hunter2"


def test_format_1_repositories_keep_working_and_ignore_a_secret(tmp_path):
    src = tmp_path / "src"
    _marked_tree(src, random.Random(8))
    path = str(tmp_path / "repo")
    repo = Repository.open_local(path, create=True)
    assert repo.config.version == 1 and repo.config.encryption is None and not repo.encrypted
    s = repo.backup(BackupRequest(source="s", paths=(str(src),)))
    repo.close()
    again = Repository.open_local(path, secret=_secret())
    again.restore(again.get_set(s.id), str(tmp_path / "out"))
    assert_same_tree(str(src), str(tmp_path / "out"))
    with pytest.raises(FailedPreconditionError, match="not encrypted"):
        again.list_keys()


def test_encrypted_repository_size_is_within_two_percent(tmp_path):
    rng = random.Random(9)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):  # half compressible, half not, chunks of realistic size
        (src / f"t{i}").write_bytes((b"line of text %d\n" % i) * 60000)
        (src / f"r{i}").write_bytes(rng.randbytes(600_000))
    sizes = []
    for secret in (None, _secret()):
        backend = MemoryBackend()
        repo = Repository.init(backend, secret=secret, argon2=FAST)
        repo.backup(BackupRequest(source="s", paths=(str(src),)))
        sizes.append(sum(len(backend.get(k, n)) for k, n in _objects(backend) if k != "keys"))
    assert sizes[1] <= sizes[0] * 1.02, sizes


def test_a_sealed_object_moved_to_another_name_does_not_open(tmp_path):
    backend = MemoryBackend()
    repo = Repository.init(backend, secret=_secret(), argon2=FAST)
    repo.put_wal(WAL_NAME, b"first segment" * 100)
    other = "000000010000000000000008"
    backend.put("wal", other, backend.get("wal", WAL_NAME))  # a valid catalog entry, wrong place
    with pytest.raises(CorruptionError, match="authentication failed"):
        Repository.open(backend, secret=_secret()).get_wal(other)
    key_id = repo.key_id  # a key object of another repository does not open this one
    elsewhere = MemoryBackend()
    Repository.init(elsewhere, secret=_secret(), argon2=FAST)
    for k in list(elsewhere.list("keys")):
        elsewhere.delete("keys", k)
    elsewhere.put("keys", key_id, backend.get("keys", key_id))
    with pytest.raises(CorruptionError, match="another repository's"):
        Repository.open(elsewhere, secret=_secret())


@pytest.mark.parametrize("encrypted", [True, False])
def test_pack_trailers_name_no_blob_in_an_encrypted_repository(tmp_path, encrypted):
    src = tmp_path / "src"
    _marked_tree(src, random.Random(10))
    backend = MemoryBackend()
    repo = Repository.init(backend, secret=_secret() if encrypted else None, argon2=FAST)
    repo.backup(BackupRequest(source="s", paths=(str(src),)))
    packs = b"".join(backend.get("packs", n) for n in backend.list("packs"))
    shown = [bid for bid, _ in repo.index.items() if bid in packs]
    assert (shown == []) if encrypted else len(shown) == len(repo.index)
    assert repo.check(read_data=True).ok


def test_an_init_killed_between_key_and_config_is_created_afresh(tmp_path):
    path = str(tmp_path / "repo")
    first = Repository.init_local(path, secret=_secret())
    os.unlink(os.path.join(path, "config", "config"))  # as if killed before the config was written
    assert Repository.uninitialised_local(path)
    repo = Repository.open_local(path, create=True, secret=_secret("new one"))
    assert repo.encrypted and repo.config.id != first.config.id
    assert [k for _i, k, _p in repo.list_keys()] == [repo.key_id]  # the orphan key is gone
    with pytest.raises(FailedPreconditionError, match="last usable key"):
        repo.remove_key(repo.key_id)
    src = tmp_path / "src"
    _marked_tree(src, random.Random(12))
    repo.backup(BackupRequest(source="s", paths=(str(src),)))
    assert not Repository.uninitialised_local(path)


@pytest.mark.parametrize("swapped", ["config", "keys"])
def test_another_repositorys_config_or_keys_are_named_not_taken_for_a_wrong_passphrase(swapped: str) -> None:
    """Two repositories made with the same passphrase; one's config (or its keys) put in the
    other: opening says the objects belong to different repositories, not "wrong passphrase"."""
    a, b = MemoryBackend(), MemoryBackend()
    for backend in (a, b):
        Repository.init(backend, secret=_secret(), argon2=FAST).close()
    for name in list(a.list(swapped)):
        a.delete(swapped, name)
    for name in b.list(swapped):
        a.put(swapped, name, b.get(swapped, name))
    with pytest.raises(CorruptionError, match="but its key objects belong to .*another repository's") as e:
        Repository.open(a, secret=_secret())
    assert "passphrase" not in str(e.value)
    with pytest.raises(WrongKeyError):  # a wrong passphrase is still said as such
        Repository.open(b, secret=_secret("wrong"))


def test_init_replaces_only_cairn_key_objects_left_by_a_killed_init():
    """Init deletes what an init killed before its config left in keys/ (Cairn key objects), and
    refuses, deleting nothing, when keys/ holds anything else (another tool's keys)."""
    from cairn.store.errors import AlreadyExistsError

    secret = crypto.Secret("passphrase", b"pw")
    fast = {"memory_kib": 1024, "iterations": 1, "lanes": 1}
    killed = MemoryBackend()
    _, leftover = crypto.make_key_object("0" * 32, os.urandom(crypto.MASTER_LEN), secret, fast)
    killed.put("keys", "aa" * 16, leftover)
    repo = Repository.init(killed, secret=secret, argon2=fast)
    assert "aa" * 16 not in set(killed.list("keys")) and len(list(killed.list("keys"))) == 1
    repo.close()

    foreign = MemoryBackend()
    foreign.put("keys", "4f3a9b0c1d2e", b'{"kdf": "scrypt"}')
    with pytest.raises(AlreadyExistsError, match="keys/4f3a9b0c1d2e is not a Cairn key object"):
        Repository.init(foreign, secret=secret, argon2=fast)
    assert foreign.get("keys", "4f3a9b0c1d2e") == b'{"kdf": "scrypt"}'
    assert not list(foreign.list("config"))


def test_a_damaged_wal_entry_is_named_in_full(tmp_path):
    """WAL file names share their first digits (timeline, log): the message names the whole
    name of the entry that fails, never an 8-character prefix every segment has."""
    backend = MemoryBackend()
    repo = Repository.init(backend, secret=_secret(), argon2=FAST)
    repo.put_wal(WAL_NAME, os.urandom(5000))
    sealed = bytearray(backend.get("wal", WAL_NAME))
    sealed[len(sealed) // 2] ^= 0x01
    backend.put("wal", WAL_NAME, bytes(sealed))
    repo.close()
    repo = Repository.open(backend, secret=_secret())
    with pytest.raises(CorruptionError) as e:
        repo.get_wal(WAL_NAME)
    assert f"unable to read wal object '{WAL_NAME}': authentication failed" in str(e.value)
    assert any(WAL_NAME in p.message for p in repo.check().errors)
    repo.close()

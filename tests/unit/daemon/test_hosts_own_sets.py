"""Skip-if-unchanged and the backstop scan on a repository shared by hosts that use the same
source name: the set that describes the source is this host's newest, never another host's."""

from __future__ import annotations

from types import SimpleNamespace

from cairn.daemon.changes.skip import unchanged_since


def _set(set_id: str, host: str, level: str = "full") -> SimpleNamespace:
    return SimpleNamespace(id=set_id, hostname=host, level=level)


def _world(sets: list[SimpleNamespace], host: str = "alpha", last_set: str | None = "a1",
           aux_paths: tuple[str, ...] = ()):
    config = SimpleNamespace(daemon=SimpleNamespace(skip_unchanged=True, host=host),
                             sources=[SimpleNamespace(name="data", watch=True, database=None, paths=("/srv/data",),
                                                      aux_paths=aux_paths)])
    tracker = SimpleNamespace(status=lambda source: SimpleNamespace(state="complete", pending_paths=0,
                                                                    oldest_unprotected_age=None, last_set=last_set))
    repo = SimpleNamespace(list_sets=lambda source: list(sets))
    return config, tracker, repo


def test_the_newest_set_of_this_host_is_the_one_kept():
    config, tracker, repo = _world([_set("a1", "alpha"), _set("b1", "beta")])
    assert unchanged_since(config, tracker, repo, "data", "incremental") == "a1"


def test_only_other_hosts_sets_mean_a_set_is_taken():
    config, tracker, repo = _world([_set("b1", "beta")])
    assert unchanged_since(config, tracker, repo, "data", "incremental") is None


def test_a_set_is_taken_when_the_journal_counts_from_a_set_that_is_not_the_newest():
    """The newest set the journal recorded was forgotten (prune --forget): "nothing pending"
    counts from it, so what changed since the newest set left is not known; the set is taken."""
    config, tracker, repo = _world([_set("a1", "alpha")], last_set="a2-forgotten")
    assert unchanged_since(config, tracker, repo, "data", "incremental") is None


def test_a_set_is_taken_when_the_source_has_aux_paths_no_watch_covers():
    config, tracker, repo = _world([_set("a1", "alpha")], aux_paths=("/etc/app",))
    assert unchanged_since(config, tracker, repo, "data", "incremental") is None
    config, tracker, repo = _world([_set("a1", "alpha")], aux_paths=("/srv/data/conf",))  # inside: watched
    assert unchanged_since(config, tracker, repo, "data", "incremental") == "a1"


def test_the_backstop_compares_with_this_hosts_newest_set():
    from cairn.daemon.changes.backstop import Backstop

    sets = [_set("a1", "alpha"), _set("b1", "beta")]
    repo = SimpleNamespace(list_sets=lambda source: list(sets))
    backstop = Backstop(repo, None, lambda: [], lambda: 60.0, lambda: set(), host=lambda: "alpha")
    assert backstop._latest("data").id == "a1"
    assert Backstop(repo, None, lambda: [], lambda: 60.0, lambda: set(), host=lambda: "gamma")._latest("data") is None

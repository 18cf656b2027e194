"""What a write-only host is told to do about damage: the repair and inspection commands a hint
names are asked of a host with a full key (store/snapshots/writeonly.py full_key_hint)."""

from __future__ import annotations

from cairn.store.snapshots.writeonly import full_key_hint

ASK = "ask a host with a full key (this host's key is write-only)"


def test_a_hint_to_run_a_repair_asks_a_full_key_host_to_run_it() -> None:
    hint = "run 'cairn repair index' (it drops what the lost pack held), then back up again"
    assert full_key_hint(hint) == f"{ASK} to run 'cairn repair index' (it drops what the lost pack held), then back " \
                                  "up again"
    assert full_key_hint("then run 'cairn repair index --read-data'") == \
        f"then {ASK} to run 'cairn repair index --read-data'"


def test_a_hint_naming_full_key_commands_otherwise_says_to_ask_such_a_host() -> None:
    hint = "'cairn verify' names the damage; 'cairn repair sets' removes damaged set objects"
    assert full_key_hint(hint) == f"{hint} (ask a host with a full key to run 'cairn verify' and 'cairn repair " \
                                  "sets': this host's key is write-only)"
    hint = "wait for it to finish, or 'cairn unlock --host H' removes a dead host's"
    assert full_key_hint(hint) == f"{hint} (ask a host with a full key to run 'cairn unlock --host H': this " \
                                  "host's key is write-only)"


def test_other_hints_are_unchanged() -> None:
    for hint in (None, "", "run the backup again: it builds on the newest set there is",
                 "take it again with 'cairn backup --level full'"):
        assert full_key_hint(hint) == hint


def test_a_hint_that_asks_a_full_key_host_already_is_unchanged() -> None:
    from cairn.store.content.crypto import write_only_refusal

    hint = write_only_refusal("to prune", "cairn prune").hint
    assert hint == "ask a host with a full key (passphrase or key file) to run 'cairn prune'"
    assert full_key_hint(hint) == hint

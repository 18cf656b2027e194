"""Damage campaign: every class of repository object damaged in every way, then the commands an
operator runs, through the real daemon and client.

One encrypted repository is built once (three sets, two archived WAL files, a second key, a lock
of a backup running elsewhere, a garbage-collection marker a day from ripe) with a copy of it,
and of the daemon's state directory, taken before its last backup. Each trial copies it,
damages one object (or one class) and starts cairnd on the copy:

- classes: the config, key objects, set objects, index files, packs holding trees, packs
  holding file data, WAL catalog entries, packs holding WAL segments, locks, gc markers, and
  the daemon's state directory (caches, journal, its notes);
- kinds: delete, truncate to 0, truncate to half, flip one byte, zero a 4 KiB block, zero the
  tail from a random point (the size kept: what a crash leaves of a file's last blocks),
  replace with another object of the class, roll the class back to its version from before
  the last backup, swap two objects' names;
- and the whole repository: rolled back to its copy from before the last backup while the
  state directory is newer, or half-synced (a copy made in the order of the paths that
  stopped after keys/: one file cut short, those after it missing).

Then: `verify`, `verify --read-data`, a restore of every set (in turn with `--verify`, written
by the daemon, streamed to the client, and `--delta` over a tree whose every byte differs),
`wal-fetch` of each archived WAL file, `cairn copy` into a new repository, an incremental and
a full backup, `prune`, the repairs the hints name (and the full backup their hint asks for),
and `verify --read-data`, the restores and the fetches again. What must hold:

- the client never shows a traceback or an internal error: a failure is one line (and a hint),
  with a non-zero exit status;
- a restore either gives exactly the set's content or fails, naming every file it could not
  give right (never silently different content);
- verify --read-data fails whenever a restore failed, and so does `verify --set SET
  --read-data` of that set (`verify --read-data-subset 1/2` runs too);
- a WAL file is fetched exactly as archived or not at all (a non-zero exit status);
- every set the copy copied restores from the copy exactly as taken, and a set it did not copy
  is one whose restore failed;
- a backup the damage did not stop commits a set that restores exactly what the source holds,
  unless the damage is one only reading the data can find (a changed byte inside a pack that is
  there at its full size: docs/operations.md, "When verify reports damage");
- after the repairs and the full backup, prune runs (after forgetting the sets its hint names,
  which must be sets whose restore failed), verify --read-data passes or names only sets whose
  restore failed before, every set that restored identical after the damage still does, and
  every WAL file fetched still is (prune and the repairs lose nothing the damage did not touch).

A set object deleted (or rolled back away, also with the whole repository) looks like a set
forgotten, which no other object records: its restore must fail, and nothing else be amiss. A
daemon may refuse to start on a damaged config or key (one line, exit 1); with the object put
back it must start, verify --read-data pass and every set restore.

CAIRN_DAMAGE_SEED picks the trials (printed on failure: set it to replay a run),
CAIRN_DAMAGE_TRIALS how many: 5 by default, sized for the suite's time budget (about 5 s a
trial on an idle machine, the history built once besides); 101 runs every class against every
kind once. CAIRN_DAMAGE_PAIRS=class/kind,... runs only those pairs (a failure's, replayed with
its seed); CAIRN_DAMAGE_PLAINTEXT=1 runs the campaign on a plaintext (format 1) repository,
whose objects are bound to their names by their hashes alone. The kit is damagekit.py.
"""

from __future__ import annotations

import random

import pytest
from damagekit import PLAINTEXT, SEED, TRIALS, LocalDriver, Template, pairs, run_campaign


@pytest.mark.slow
@pytest.mark.campaign
@pytest.mark.timeout(120 + 30 * TRIALS)
def test_damaged_repository_campaign(start_daemon, tmp_path):
    rng = random.Random(SEED)
    plain = " CAIRN_DAMAGE_PLAINTEXT=1" if PLAINTEXT else ""
    tag = f"seed {SEED} (CAIRN_DAMAGE_SEED={SEED}{plain} replays it)"
    t = Template(tmp_path / "template", LocalDriver(start_daemon, plaintext=PLAINTEXT))
    run_campaign(t, tmp_path, pairs(rng, TRIALS), rng, tag)

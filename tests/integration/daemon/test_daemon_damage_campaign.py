"""Damage campaign: every class of repository object damaged in every way, then the commands an
operator runs, through the real daemon and client.

One encrypted repository is built once (three sets, two archived WAL files, a second key, a lock
of a backup running elsewhere) with a copy of it, and of the daemon's state directory, taken
before its last backup. Each trial copies it, damages one object (or one class) and starts
cairnd on the copy:

- classes: the config, key objects, set objects, index files, packs holding trees, packs
  holding file data, WAL catalog entries, packs holding WAL segments, locks, and the daemon's
  state directory (caches, journal, its notes);
- kinds: delete, truncate to 0, truncate to half, flip one byte, zero a 4 KiB block, replace
  with another object of the class, roll the class back to its version from before the last
  backup, swap two objects' names.

Then: `verify`, `verify --read-data`, a restore of every set with `--verify`, an incremental and
a full backup, `prune`, the repairs the hints name (and the full backup their hint asks for),
and `verify --read-data` and the restores again. What must hold:

- the client never shows a traceback or an internal error: a failure is one line (and a hint),
  with a non-zero exit status;
- a restore either gives exactly the set's content or fails, naming every file it could not
  give right (never silently different content);
- verify --read-data fails whenever a restore failed;
- a backup the damage did not stop commits a set that restores exactly what the source holds,
  unless the damage is one only reading the data can find (a changed byte inside a pack that is
  there at its full size: docs/operations.md, "When verify reports damage");
- after the repairs and the full backup, prune runs (after forgetting the sets its hint names,
  which must be sets whose restore failed), verify --read-data passes or names only sets whose
  restore failed before, and every set that restored identical after the damage still does
  (prune and the repairs lose nothing the damage did not touch).

A set object deleted (or rolled back away) looks like a set forgotten, which no other object
records: its restore must fail, and nothing else be amiss. A daemon may refuse to start on a
damaged config or key (one line, exit 1); with the object put back it must start, verify
--read-data pass and every set restore.

CAIRN_DAMAGE_SEED picks the trials (printed on failure: set it to replay a run),
CAIRN_DAMAGE_TRIALS how many: 5 by default, sized for the suite's time budget (about 5 s a
trial on an idle machine, the history built once besides); 80 runs every class against every
kind once. The kit is damagekit.py.
"""

from __future__ import annotations

import random

import pytest
from damagekit import SEED, TRIALS, LocalDriver, Template, pairs, run_campaign


@pytest.mark.slow
@pytest.mark.campaign
@pytest.mark.timeout(120 + 30 * TRIALS)
def test_damaged_repository_campaign(start_daemon, tmp_path):
    rng = random.Random(SEED)
    tag = f"seed {SEED} (CAIRN_DAMAGE_SEED={SEED} replays it)"
    t = Template(tmp_path / "template", LocalDriver(start_daemon))
    run_campaign(t, tmp_path, pairs(rng, TRIALS), rng, tag)

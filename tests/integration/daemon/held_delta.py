"""The real cairnd or cairn whose delta restore holds before it moves a fresh file into place
(tests only; nothing here ships).

Run as `python held_delta.py CAIRND|CAIRN ARGS...`. Once `$CAIRN_TEST_HOLD/armed` exists, the
first file a delta writes anew under a temporary name is written whole; then, instead of
renaming it into place, the writer creates
`$CAIRN_TEST_HOLD/held` (its content: the temporary's path relative to the target) and waits
forever. A test waits for that file and kills the process: the temporary is there then, every
time, which no signal sent at a random moment can promise.
"""

from __future__ import annotations

import os
import sys
import threading

from cairn.fsio import delta
from cairn.fsio.records import EntryMeta

HOLD = os.environ["CAIRN_TEST_HOLD"]
_finish_file = delta.DeltaWriter._finish_file


def _held_finish_file(self: delta.DeltaWriter, m: EntryMeta, resize: bool) -> None:
    tmp = self._temp.get(m.path)
    if tmp is not None and m.path in self._made and os.path.exists(os.path.join(HOLD, "armed")):
        marker = os.path.join(HOLD, "held")
        with open(marker + ".tmp", "wb") as f:
            f.write(tmp)
        os.rename(marker + ".tmp", marker)  # seen whole or not at all
        threading.Event().wait()  # until the test kills the process
    _finish_file(self, m, resize)


delta.DeltaWriter._finish_file = _held_finish_file  # type: ignore[method-assign]

if __name__ == "__main__":
    program, args = os.path.basename(sys.argv[1]), sys.argv[2:]
    sys.argv = [program, *args]
    if program == "cairnd":
        from cairn.daemon.runtime import main as cairnd

        sys.exit(cairnd.main(args))
    from cairn.client import cli

    cli.run()

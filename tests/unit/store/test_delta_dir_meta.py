"""A delta mends directories' metadata as it mends files': xattrs the set does not hold are
removed from directories too (the target itself included), a directory without read
permission (0300) is set all the same, and a second delta finds nothing to do."""

from __future__ import annotations

import os
import subprocess
import sys

from cairn.fsio.delta import mend, plan
from cairn.fsio.records import EntryMeta


def _entries() -> list[EntryMeta]:
    return [EntryMeta(path=b"", kind="dir", mode=0o40750, uid=0, gid=0, mtime_ns=10**18, xattrs={b"user.a": b"1"}),
            EntryMeta(path=b"d", kind="dir", mode=0o40755, uid=0, gid=0, mtime_ns=10**18),
            EntryMeta(path=b"w", kind="dir", mode=0o40300, uid=0, gid=0, mtime_ns=10**18)]


def test_extra_directory_xattrs_go_and_a_second_delta_finds_the_tree_clean(tmp_path) -> None:
    root = str(tmp_path / "t")
    p, st = mend(root, _entries(), lambda ids: iter(()))
    assert not st.errors
    os.setxattr(root, "user.extra_root", b"x")
    os.setxattr(os.path.join(root, "d"), "user.extra_dir", b"x")
    assert not plan(root, _entries()).clean
    p, st = mend(root, _entries(), lambda ids: iter(()))
    assert not st.errors
    assert os.listxattr(root) == ["user.a"] and os.listxattr(os.path.join(root, "d")) == []
    assert plan(root, _entries()).clean
    assert os.stat(os.path.join(root, "w")).st_mode & 0o7777 == 0o300


def test_directories_it_may_not_read_are_mended(tmp_path) -> None:
    """Run without the power to bypass permissions (root without CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH, as any user on its own files): a 0300 and a 0100 directory get their
    metadata without being opened for reading, and the target's own metadata too."""
    if os.geteuid() != 0:
        return  # needs root to drop the capabilities
    root = tmp_path / "t"
    root.mkdir()
    for d, mode in (("w", 0o300), ("x", 0o100)):
        (root / d).mkdir()
        os.chmod(root / d, mode)
    code = f"""
from cairn.fsio.delta import mend
from cairn.fsio.records import EntryMeta
e = [EntryMeta(path=b"", kind="dir", mode=0o40750, mtime_ns=10**18),
     EntryMeta(path=b"w", kind="dir", mode=0o40300, mtime_ns=10**18),
     EntryMeta(path=b"x", kind="dir", mode=0o40100, mtime_ns=10**18)]
p, st = mend({str(root)!r}, e, lambda ids: iter(()))
print(st.errors)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c", code],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr)
    assert os.stat(root / "w").st_mtime_ns == 10**18 and os.stat(root / "x").st_mtime_ns == 10**18
    assert os.stat(root).st_mode & 0o7777 == 0o750

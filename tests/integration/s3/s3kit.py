"""Helpers shared by the object-store tests (tests only): files of a host's tree, what a bucket
holds under a prefix, and the part of a tree's snapshot a restore must give back.

The fixtures they share (the SeaweedFS server, credentials, a run directory) are in conftest.py.
"""

from __future__ import annotations

import os
from typing import Any


def write_file(path: str, data: bytes) -> None:
    """Write `data` to `path`, making the directories above it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def bucket_etags(weed: Any, prefix: str) -> dict[str, str]:
    """Every object under `prefix` in the test server's bucket but the locks, with its ETag."""
    out, client = {}, weed.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=weed.bucket, Prefix=prefix + "/"):
        for o in page.get("Contents", []):
            if "/locks/" not in o["Key"]:
                out[o["Key"]] = o["ETag"]
    return out


def file_facts(tree: dict[str, tuple]) -> dict[str, tuple]:
    """Of a cairnd_harness.snapshot: each file's kind, mode, size and content hash, and only the
    kind of anything else (times and owners are not what these tests compare)."""
    return {p: (v[0], v[1], v[5], v[6]) if v[0] == "file" else v[:1] for p, v in tree.items()}

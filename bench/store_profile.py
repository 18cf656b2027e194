"""Where the object store's CPU goes: SeaweedFS profiled while it takes pack-sized PUTs.

  python bench/store_profile.py [--size-mib 16] [--uploads 2] [--seconds 6] [--top 12]

One SeaweedFS (`weed mini`, as the tests and s3_backend.py start it) on loopback; PUTs of random
(incompressible, as sealed packs are) objects of `--size-mib` each, `--uploads` at once, through
Cairn's own S3 backend, until `--seconds` have passed. Meanwhile `perf record` (Debian package
linux-perf) samples the SeaweedFS process. Printed: the store's CPU per MiB taken, and the share
of its samples per Go function. The `weed` binary has no ELF symbols, so the samples are named
from its Go line table (.gopclntab, the format of Go 1.18 and later) by `go_functions` below.

Why it exists: s3_backend.py's S3-against-local ratio is measured with the store on the same
two cores as the backup; this says what the store spends them on.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PROJECT_ROOT, process_cpu  # noqa: E402

sys.path.insert(0, str(PROJECT_ROOT / "tests"))
from s3server import WeedServer  # noqa: E402

MIB = 1 << 20


def go_functions(binary: str) -> list[tuple[int, str]]:
    """(entry address, name) of every function in a Go binary, sorted, from its .gopclntab."""
    data = Path(binary).read_bytes()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = headers[shstrndx][4]

    def name(h: tuple) -> str:
        at = names_at + h[0]
        return data[at:data.index(b"\0", at)].decode()

    sections = {name(h): h for h in headers}
    if ".gopclntab" not in sections:
        raise SystemExit(f"{binary}: no .gopclntab section (not a Go binary?)")
    base = sections[".gopclntab"][4]
    magic, = struct.unpack_from("<I", data, base)
    if magic not in (0xFFFFFFF0, 0xFFFFFFF1):
        raise SystemExit(f"{binary}: Go line table of an unknown version ({magic:#x})")
    nfunc, _, text, names, _, _, _, functab = struct.unpack_from("<8Q", data, base + 8)
    text = text or sections[".text"][3]  # Go 1.20 and later fill it in at run time
    out = []
    for i in range(nfunc):
        entry, func = struct.unpack_from("<II", data, base + functab + i * 8)
        name_off, = struct.unpack_from("<i", data, base + functab + func + 4)
        at = base + names + name_off
        out.append((text + entry, data[at:data.index(b"\0", at)].decode(errors="replace")))
    out.sort()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=16, help="size of each PUT")
    ap.add_argument("--uploads", type=int, default=2, help="PUTs in flight")
    ap.add_argument("--seconds", type=float, default=6.0, help="how long to upload and sample")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    if shutil.which("perf") is None:
        raise SystemExit("perf is not installed (Debian package linux-perf)")
    from cairn.store.storage.s3 import S3Backend

    with tempfile.TemporaryDirectory(prefix="cairn-store-profile-") as tmp, WeedServer(Path(tmp) / "weed") as weed:
        os.environ.update(weed.env())
        backend = S3Backend(weed.bucket, "profile", endpoint=weed.endpoint, region="us-east-1")
        body = bytearray(os.urandom(args.size_mib * MIB))
        samples = Path(tmp) / "perf.data"
        perf = subprocess.Popen(["perf", "record", "-q", "-F", "499", "-p", str(weed.proc.pid), "-o", str(samples)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # perf attached
        sent = [0]
        lock = threading.Lock()
        end = time.monotonic() + args.seconds
        cpu0 = process_cpu(weed.proc.pid)

        def upload(worker: int) -> None:
            n = 0
            while time.monotonic() < end:
                backend.put("packs", f"{worker:02x}{n:062x}", body)
                n += 1
                with lock:
                    sent[0] += len(body)

        with ThreadPoolExecutor(args.uploads) as pool:
            list(pool.map(upload, range(args.uploads)))
        cpu = process_cpu(weed.proc.pid) - cpu0
        perf.send_signal(2)
        perf.wait(60)
        script = subprocess.run(["perf", "script", "-i", str(samples), "-F", "ip,dso", "-G"],
                                capture_output=True, text=True, check=True).stdout
        binary = os.path.realpath(weed.binary)
        functions = go_functions(binary)
        entries = [a for a, _ in functions]
        counts: collections.Counter[str] = collections.Counter()
        for line in script.splitlines():
            parts = line.split()
            if len(parts) < 2:
                continue
            if "weed" not in parts[1]:
                counts["(kernel and libraries)" if "kernel" in parts[1] or ".so" in parts[1] else parts[1]] += 1
                continue
            i = bisect.bisect_right(entries, int(parts[0], 16)) - 1
            counts[functions[i][1] if i >= 0 else "?"] += 1
    total = sum(counts.values()) or 1
    mib = sent[0] / MIB
    print(f"SeaweedFS took {mib:.0f} MiB in PUTs of {args.size_mib} MiB, {args.uploads} at once: "
          f"{cpu:.2f} s of CPU, {cpu * 1000 / mib:.2f} ms per MiB; {total} samples")
    for name, n in counts.most_common(args.top):
        print(f"  {n * 100 / total:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

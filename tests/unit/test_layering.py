"""The dependency direction of the packages holds: store and fsio never reach up, the client
never opens a repository, and outside libraries live in their one adapter module.

Inside the daemon the rooms (sub-packages) keep their direction too (docs/design.md, "The
daemon's rooms"): change tracking, databases and scheduling stand on the runtime's foundations
only; windows add the databases; the operations use them all; the gRPC adapter sits on the
operations; and only `runtime.process` wires the process together, which only the entry point
`runtime.main` imports, and nothing imports that."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"store": "cairn.store", "daemon": "cairn.daemon", "client": "cairn.client", "fsio": "cairn.fsio",
           "cairn_pkg": "cairn", "proto": "cairn.proto"}

# package -> import prefixes it must never use
FORBIDDEN = {
    "cairn.fsio": ("cairn.store", "cairn.daemon", "cairn.client", "cairn.proto", "grpc", "watchdog", "psycopg2"),
    "cairn.store": ("cairn.daemon", "cairn.client", "cairn.proto", "grpc", "watchdog", "psycopg2"),
    "cairn.client": ("cairn.store", "cairn.daemon", "watchdog", "psycopg2"),
    "cairn.daemon": ("cairn.client",),
    "cairn": ("cairn.store", "cairn.daemon", "cairn.client", "cairn.fsio", "cairn.proto", "grpc", "google"),
    "cairn.proto": ("cairn.store", "cairn.daemon", "cairn.client", "watchdog", "psycopg2"),
}
# outside library -> the only daemon modules allowed to import it
ADAPTERS = {"watchdog": {"changes/watcher.py"}, "psycopg2": {"databases/postgres/connection.py"}}

# daemon room -> the other rooms it may import from
ROOMS = {
    "runtime": {"changes", "databases", "windows", "scheduling", "operations", "rpc"},  # main wires them all
    "changes": {"runtime"},
    "databases": {"runtime"},
    "scheduling": {"runtime"},
    "windows": {"databases", "runtime"},
    "operations": {"changes", "databases", "windows", "scheduling", "runtime"},
    "rpc": {"operations", "databases", "scheduling", "runtime"},
}
# the runtime's foundations, which every room may use; the rest of runtime is the process itself
FOUNDATIONS = {"cairn.daemon.runtime." + m for m in ("config", "threads", "durations", "health")}
# what the runtime's modules other than main may reach outside the runtime (the configuration
# checks cron expressions and keep rules; preflight asks a database)
RUNTIME_REACH = ("cairn.daemon.scheduling.cron", "cairn.daemon.scheduling.retention",
                 "cairn.daemon.databases.postgres.connection")
MAIN = "cairn.daemon.runtime.main"
PROCESS = "cairn.daemon.runtime.process"
WIRING = (MAIN, PROCESS)  # the modules that may reach every room


def module_name(package: str, path: Path) -> str:
    folder = next(f for f, p in FOLDERS.items() if p == package)
    parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def imports(path: Path, module: str = "") -> set[str]:
    """Every module `path` imports; `from a import b` counts as a.b too (b may be a module),
    relative imports resolved against `module` (the importing module's dotted name)."""
    return imports_of(path.read_text(), module, str(path), is_package=path.name == "__init__.py")


def imports_of(source: str, module: str = "", filename: str = "<source>", is_package: bool = False) -> set[str]:
    tree = ast.parse(source, filename=filename)
    here = module.split(".") if is_package else module.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{a.name}" for a in node.names if a.name != "*")
    return out


def room_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["cairn", "daemon"] and parts[2] in ROOMS else None


def room_violations(module: str, used: set[str]) -> list[str]:
    """Imports of daemon module `module` that break the rooms' direction."""
    bad = []
    mine = room_of(module)
    for m in sorted(used):
        if not m.startswith("cairn.daemon."):
            continue
        if m == MAIN or m.startswith(MAIN + "."):
            bad.append(f"{m} (nothing imports the process's entry point)")
            continue
        if (m == PROCESS or m.startswith(PROCESS + ".")) and module != MAIN:
            bad.append(f"{m} (only the entry point starts the running daemon)")
            continue
        theirs = room_of(m)
        if theirs is None or theirs == mine:
            continue
        if mine is None or theirs not in ROOMS[mine]:
            bad.append(f"{m} (room '{mine}' may not import room '{theirs}')")
        elif theirs == "runtime" and mine != "runtime" and not any(m == f or m.startswith(f + ".")
                                                                   for f in FOUNDATIONS):
            bad.append(f"{m} (only the runtime uses its process modules; others use {sorted(FOUNDATIONS)})")
        elif mine == "runtime" and module not in WIRING and not any(m == r or m.startswith(r + ".")
                                                                      for r in RUNTIME_REACH):
            bad.append(f"{m} (only runtime.process wires the rooms together)")
    return bad


def modules():
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield package, path


@pytest.mark.parametrize("package,path", list(modules()), ids=lambda v: str(v).replace(str(ROOT) + "/", ""))
def test_module_respects_the_layering(package: str, path: Path) -> None:
    module = module_name(package, path)
    used = imports(path, module)
    bad = sorted(m for m in used for p in FORBIDDEN[package] if m == p or m.startswith(p + "."))
    assert not bad, f"{path.relative_to(ROOT)} ({package}) imports {bad}"
    for lib, allowed in ADAPTERS.items():
        if any(m == lib or m.startswith(lib + ".") for m in used):
            assert package == "cairn.daemon" and path.relative_to(ROOT / "daemon").as_posix() in allowed, \
                f"{path.relative_to(ROOT)} imports {lib}, which only {sorted(allowed)} may"
    if package == "cairn.daemon":
        bad = room_violations(module, used)
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_every_daemon_module_lives_in_a_room() -> None:
    """The daemon's top folder holds the rooms and nothing else (bar the package's own file)."""
    loose = sorted(p.name for p in (ROOT / "daemon").glob("*.py") if p.name != "__init__.py")
    assert not loose, f"modules outside the daemon's rooms: {loose}"
    rooms = sorted(p.name for p in (ROOT / "daemon").iterdir() if (p / "__init__.py").exists())
    assert rooms == sorted(ROOMS), rooms


def test_the_check_sees_imports() -> None:
    """Guard against a check that passes because it reads nothing."""
    watcher = imports(ROOT / "daemon" / "changes" / "watcher.py", "cairn.daemon.changes.watcher")
    assert any(m.startswith("watchdog") for m in watcher)
    assert any(m.startswith("cairn.store") for m in imports(ROOT / "daemon" / "operations" / "service.py"))
    process = imports(ROOT / "daemon" / "runtime" / "process.py", PROCESS)
    assert "cairn.daemon.rpc.server" in process and not room_violations(PROCESS, process)
    main = imports(ROOT / "daemon" / "runtime" / "main.py", MAIN)
    assert PROCESS in main and not room_violations(MAIN, main)


@pytest.mark.parametrize("module,source", [
    ("cairn.daemon.changes.tracker", "from cairn.daemon.rpc import servicer\n"),
    ("cairn.daemon.changes.tracker", "from ..rpc.servicer import CairnServicer\n"),
    ("cairn.daemon.databases.dump", "from cairn.daemon.windows.quiesce import Window\n"),
    ("cairn.daemon.windows.capture", "import cairn.daemon.operations.service\n"),
    ("cairn.daemon.scheduling.jobs", "from cairn.daemon.changes.skip import unchanged_since\n"),
    ("cairn.daemon.operations.service", "from cairn.daemon.rpc.errors import status_for\n"),
    ("cairn.daemon.operations.service", "from cairn.daemon.runtime.main import Daemon\n"),
    ("cairn.daemon.rpc.server", "from cairn.daemon.runtime import main\n"),
    ("cairn.daemon.runtime.config", "from cairn.daemon.runtime.process import Daemon\n"),
    ("cairn.daemon.operations.service", "from cairn.daemon.runtime import process\n"),
    ("cairn.daemon.runtime.preflight", "from cairn.daemon.operations.service import CairnService\n"),
    ("cairn.daemon.rpc.server", "from cairn.daemon.runtime.sdnotify import Notifier\n"),
    ("cairn.daemon.runtime.config", "from cairn.daemon.operations.service import CairnService\n"),
])
def test_a_room_violation_is_caught(module: str, source: str) -> None:
    """Each rule fails on a module that breaks it (a check that cannot fail shows nothing)."""
    assert room_violations(module, imports_of(source, module))


@pytest.mark.parametrize("source", ["from cairn.daemon.runtime import config\n", "import cairn.store.repository\n"])
def test_the_client_may_not_reach_the_daemon_or_store(source: str) -> None:
    used = imports_of(source, "cairn.client.cli")
    assert any(m == p or m.startswith(p + ".") for m in used for p in FORBIDDEN["cairn.client"])


@pytest.mark.parametrize("package,path", [m for m in modules() if m[0] != "cairn.proto"],
                         ids=lambda v: str(v).replace(str(ROOT) + "/", ""))
def test_no_switch_only_tests_turn(package: str, path: Path) -> None:
    """Test hooks live in the tests (tests/watcher_hooks.py, the wrapped daemons): production
    code reads no test-only environment variable."""
    text = path.read_text()
    assert "CAIRN_TEST" not in text and "CAIRN_FAULT" not in text, f"{path.relative_to(ROOT)} has a test switch"


# -- layers inside the store ------------------------------------------------------------
# Each layer knows only what lies below it; the facade (repository.py, locations.py) sits on
# top of all of them. Base modules hold what every layer shares and import no layer.
STORE = ROOT / "store"
BASE = {"cairn.store", "cairn.store.errors", "cairn.store.model", "cairn.store.memory", "cairn.store.segments"}
FACADE = {"cairn.store.repository", "cairn.store.locations", "cairn.store.copy"}  # copy works on two open repositories
LAYERS = ("storage", "content", "snapshots", "maintenance")  # bottom to top


def store_module(path: Path) -> str:
    parts = list(path.relative_to(STORE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["cairn", "store", *parts])


def rank(module: str) -> int:
    """0 for base modules, 1.. for the layers bottom to top, len(LAYERS) + 1 for the facade."""
    if module in BASE:
        return 0
    if module in FACADE:
        return len(LAYERS) + 1
    parts = module.split(".")
    if len(parts) >= 3 and parts[2] in LAYERS:
        return LAYERS.index(parts[2]) + 1
    raise AssertionError(f"{module} belongs to no layer: put it in one of store/{', store/'.join(LAYERS)}, "
                         "or name it in BASE or FACADE of this test")


def known_store_modules() -> set[str]:
    return {store_module(p) for p in STORE.rglob("*.py")}


def store_imports(path: Path, source: str | None = None) -> set[str]:
    """The store modules `path` imports, relative or absolute, at any depth of the file
    (under TYPE_CHECKING and inside functions too: those are dependencies all the same)."""
    me = store_module(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    known = known_store_modules()
    tree = ast.parse(source if source is not None else path.read_text(), filename=str(path))
    out: set[str] = set()

    def add(name: str) -> None:
        while name and name not in known:  # `from pkg import name`: the module, else the package
            name = name.rsplit(".", 1)[0] if "." in name else ""
        if name.startswith("cairn.store") and name != me:
            out.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod)
    return out


def store_graph() -> dict[str, set[str]]:
    return {store_module(p): store_imports(p) for p in sorted(STORE.rglob("*.py"))}


def upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} imports {t}" for m, ts in graph.items() for t in ts if rank(t) > rank(m))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_store_module_is_in_a_layer() -> None:
    for module in store_graph():
        rank(module)


def test_store_layers_import_only_downwards() -> None:
    bad = upward(store_graph())
    assert not bad, "store layers are storage < content < snapshots < maintenance < repository:\n" + "\n".join(bad)


def test_store_modules_have_no_import_cycles() -> None:
    found = cycles(store_graph())
    assert not found, f"import cycles in the store: {found}"


def test_the_store_layer_checks_see_a_violation() -> None:
    """Guard against checks that pass because they read nothing: an upward import under
    TYPE_CHECKING in a storage module, and a cycle, are both found."""
    graph = store_graph()
    backend = STORE / "storage" / "backend.py"
    assert "cairn.store.errors" in graph["cairn.store.storage.backend"]
    assert "cairn.store.content.blobs" in graph["cairn.store.snapshots.filereader"]
    planted = backend.read_text() + "\nif TYPE_CHECKING:\n    from ..content.packs import PackEntry\n"
    planted_up = "cairn.store.storage.backend imports cairn.store.content.packs"
    assert planted_up not in upward(graph)
    graph["cairn.store.storage.backend"] = store_imports(backend, planted)
    assert planted_up in upward(graph)
    graph["cairn.store.content.packs"] = graph["cairn.store.content.packs"] | {"cairn.store.storage.backend"}
    assert any({"cairn.store.content.packs", "cairn.store.storage.backend"} <= set(c) for c in cycles(graph))
    with pytest.raises(AssertionError, match="belongs to no layer"):
        rank("cairn.store.stray")


def test_the_facade_offers_what_the_layers_below_use() -> None:
    """Sessions, the WAL catalog, check and prune see the repository only through the
    protocols of their layers: the facade must offer every member publicly."""
    import inspect

    from cairn.store.maintenance.handle import MaintainedRepository
    from cairn.store.repository import Repository
    from cairn.store.snapshots.handle import RepositoryHandle
    from cairn.store.storage.backend import MemoryBackend

    repo = Repository.init(MemoryBackend())
    for proto in (RepositoryHandle, MaintainedRepository):
        names = set(inspect.get_annotations(proto)) | {
            n for n, v in vars(proto).items() if callable(v) and not n.startswith("_")}
        for cls in proto.__mro__[1:]:
            if cls.__name__ == "RepositoryHandle":
                names |= set(inspect.get_annotations(cls))
        missing = sorted(n for n in names if not hasattr(repo, n))
        assert not missing, f"Repository lacks {missing} of {proto.__name__}"
        for n in names:
            assert not n.startswith("_")

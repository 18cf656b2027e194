"""The daemon's gRPC endpoints: a Unix socket, and TCP only with TLS and a token.

What always holds: the Unix socket is created with a restrictive umask and then given mode
`socket_mode` (default 0660) and, if configured, the group `socket_group`, so only its owner
and that group may call; an existing socket is replaced only if no daemon answers on it. The
TCP endpoint exists only with a certificate, a key and a token file, and every call on it must
carry `authorization: Bearer <token>` or is refused with UNAUTHENTICATED; a call on it never
makes the daemon write on its own host (a request's `local_claim` is refused with
FAILED_PRECONDITION, whatever claim file exists there). An endpoint that cannot
be bound (a socket path too long for sun_path, a directory that is read-only or takes no
sockets, a port in use) is one FailedPreconditionError "unable to listen on 'WHERE': REASON",
the reason found by binding a plain socket there first (gRPC names none). Both endpoints serve
cairn.v1.Cairn, grpc.health.v1 (SERVING while up) and server reflection, with messages capped
at MAX_MESSAGE_BYTES. Requests that do not parse get INVALID_ARGUMENT, not INTERNAL. Health
and reflection are served by `health`: their long-lived streams share a few slots, so they
can take at most AUX_STREAMS of the WORKERS threads (see that module). Cairn's own streaming
calls take slots of their listener's pools and are cancelled when they wait on a client that
stopped reading (`streams`): no client can take the threads that WAL pushes and unary calls
need. That stall watch is what gives up on a client that is there but takes nothing (a
suspended `cairn`): neither gRPC nor the kernel drops a connection sooner than PEER_TIMEOUT,
a minute past the stall timeout, on either endpoint (`transport_options`).
"""

from __future__ import annotations

import contextlib
import grp
import hmac
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
from cairn import protocol
from cairn.daemon.rpc.health import AUX_STREAMS, HealthService, LimitedReflection
from cairn.daemon.rpc.servicer import CairnServicer, Malformed
from cairn.daemon.rpc.streams import STALL_TIMEOUT, Slots, StreamGuard, workers
from cairn.daemon.runtime.config import DaemonConfig
from cairn.fsio.sockets import check_socket_path
from cairn.proto.cairn.v1 import cairn_pb2 as pb
from cairn.store.errors import FailedPreconditionError, InvalidArgumentError
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = protocol.MAX_MESSAGE_BYTES
WORKERS = workers(AUX_STREAMS)  # every stream slot of a listener, health's and reflection's, and a reserve
MAX_CONCURRENT_RPCS = 512  # calls running or queued; beyond, RESOURCE_EXHAUSTED (bounds a flood's memory)
SERVICE = pb.DESCRIPTOR.services_by_name["Cairn"]
TOKEN_KEY = "authorization"
UNIX_PATH_MAX = 107  # bytes of a Unix socket path: sun_path holds 108, the last its terminating NUL
# Seconds the connection itself waits on a peer that takes nothing and acknowledges nothing before
# it is dropped: a minute past the stall watch, so the watch is what gives up on a client that stops
# reading. gRPC's own defaults dropped it much sooner (see `transport_options`).
PEER_TIMEOUT = STALL_TIMEOUT + 60


def transport_options(peer_timeout: float | None = None) -> list[tuple[str, int]]:
    """The gRPC server arguments that decide when a connection's peer is given up on: all
    `peer_timeout` (None: PEER_TIMEOUT, read when called).

    With gRPC's server defaults a suspended client (SIGSTOP, a laptop asleep) lost its call long
    before the stall watch would have cancelled it: every accepted TCP connection gets
    TCP_USER_TIMEOUT = the keepalive timeout (20 s), and Linux aborts a connection whose peer's
    receive window stays shut that long even though the peer's kernel answers every probe (a
    restore failed with "connection reset by peer"); a ping the daemon sends (flow-control probes
    while a client streams requests) had to be answered within 1 minute (a WAL push failed with
    "ping timeout"), a SETTINGS frame within max(2 x the keepalive timeout, 1 minute). A peer that
    is really gone is still let go: a killed process's kernel closes the connection at once, the
    stall watch frees the call's thread and slot, and the kernel drops a connection whose peer
    acknowledges nothing for `peer_timeout`. Keepalive pings keep gRPC's server period (2 h)."""
    if peer_timeout is None:
        peer_timeout = PEER_TIMEOUT
    ms = min(int(peer_timeout * 1000), 2**31 - 1)  # a channel argument is a C int
    return [
        ("grpc.keepalive_timeout_ms", ms),  # also TCP_USER_TIMEOUT of every accepted TCP connection
        ("grpc.http2.ping_timeout_ms", ms),
        ("grpc.http2.settings_timeout", ms),
    ]


def _tolerant(cls: Any, method: str) -> Callable[[bytes], Any]:
    """A deserializer that turns an unparseable message into a Malformed placeholder."""

    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except (DecodeError, ValueError) as exc:
            return Malformed(method, str(exc) or type(exc).__name__)

    return parse


def cairn_handler(servicer: CairnServicer, guard: StreamGuard | None = None,
                  remote: bool = False) -> grpc.GenericRpcHandler:
    """The method handlers of cairn.v1.Cairn, built from the service descriptor; with `guard`
    every streaming call holds one of its slots and is watched for stalls. With `remote` (the
    TCP listener) a request that asks the daemon to write on its own host (`local_claim`) is
    refused before it runs: only a client on this host, through the Unix socket, may ask that."""
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    handlers = {}
    for m in SERVICE.methods:
        request_cls = getattr(pb, m.input_type.name)
        reply_cls = getattr(pb, m.output_type.name)
        make = kinds[(m.client_streaming, m.server_streaming)]
        behaviour = getattr(servicer, m.name)
        if remote and "local_claim" in request_cls.DESCRIPTOR.fields_by_name:
            behaviour = _no_local_writes(behaviour, m.server_streaming)
        if guard is not None and m.server_streaming:
            behaviour = guard.replies(m.name, behaviour)
        elif guard is not None and m.client_streaming:
            behaviour = guard.requests(m.name, behaviour)
        handlers[m.name] = make(
            behaviour,
            request_deserializer=_tolerant(request_cls, f"/{SERVICE.full_name}/{m.name}"),
            response_serializer=reply_cls.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(SERVICE.full_name, handlers)


def _no_local_writes(behaviour: Callable, streaming: bool) -> Callable:
    """`behaviour`, refusing a request with a `local_claim` (a write by the daemon into a place on
    its own host) with FAILED_PRECONDITION before it runs. A claim file only proves who made it
    on this host, not that the caller is on it: a remote caller names paths of another machine."""

    def refuse(request: Any, context: grpc.ServicerContext) -> None:
        claim = getattr(request, "local_claim", "")
        if claim:
            target = os.fsdecode(getattr(request, "target_path", b""))
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"local write to '{target}' refused: the call came over TCP; the daemon writes only for a "
                          "client on its own host, through its Unix socket")

    if streaming:
        def handle_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            refuse(request, context)
            yield from behaviour(request, context)

        return handle_stream

    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        refuse(request, context)
        return behaviour(request, context)

    return handle


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses every call that does not carry `authorization: Bearer <token>`."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

        def deny(request: Any, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token: pass --token or --token-file")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        for key, value in details.invocation_metadata or ():
            if key == TOKEN_KEY:
                got = value.encode() if isinstance(value, str) else value
                if hmac.compare_digest(got, self._expected):
                    return continuation(details)
        return self._deny


def read_token(path: str) -> str:
    """The token of a token file (surrounding whitespace ignored); it must not be empty."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as exc:
        raise InvalidArgumentError(f"unable to read token file '{path}': {exc.strerror}") from exc
    if not token:
        raise InvalidArgumentError(f"token file '{path}' is empty")
    return token


class RpcServer:
    """The gRPC server(s) of the daemon: Unix socket always, TCP with TLS + token if configured."""

    def __init__(self, servicer: CairnServicer, config: DaemonConfig) -> None:
        self._servicer = servicer
        self._config = config
        self._aux_slots = Slots(AUX_STREAMS)
        self._health = HealthService(self._aux_slots)
        self._servers: list[grpc.Server] = []
        self._guards: list[StreamGuard] = []
        self._bound_socket: str | None = None  # only a socket this server created is removed
        self.tcp_port: int | None = None

    def start(self) -> None:
        """Bind the endpoints and start serving; the health service then answers SERVING."""
        self._servers.append(self._start_unix(self._config.socket))
        if self._config.listen:
            self._servers.append(self._start_tcp(self._config.listen))
        for name in ("", SERVICE.full_name):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def blocked_calls(self) -> int:
        """Streaming calls whose handler has not ended; after the stop, those blocked for good in
        a send their client does not take (their threads would hold up the interpreter's exit)."""
        return sum(g.held() for g in self._guards)

    def stop(self, grace: float) -> threading.Event:
        """Stop accepting calls; running ones get `grace` seconds. Returns an Event set when done."""
        self._health.enter_graceful_shutdown()
        events = [s.stop(grace) for s in self._servers]
        done = threading.Event()

        def wait_all() -> None:
            for e in events:
                e.wait()
            for g in self._guards:
                g.watch.close()
            if self._bound_socket:
                _unlink_socket(self._bound_socket)
            done.set()

        threading.Thread(target=wait_all, name="rpc-stop", daemon=True).start()
        return done

    # ---- endpoints ----

    def _new_server(self, interceptors: tuple = (), remote: bool = False) -> grpc.Server:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="rpc"),
            interceptors=interceptors,
            maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
                *transport_options(),
            ],
        )
        guard = StreamGuard()
        self._guards.append(guard)
        server.add_generic_rpc_handlers((cairn_handler(self._servicer, guard, remote=remote),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = (SERVICE.full_name, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(LimitedReflection(names, self._aux_slots), server)
        return server

    def _start_unix(self, path: str) -> grpc.Server:
        _check_socket_length(path)
        gid = _group_id(self._config.socket_group) if self._config.socket_group else -1
        _prepare_socket_path(path)
        server = self._new_server()
        old_umask = os.umask(0o177)
        try:
            _probe_unix(path)
            try:
                server.add_insecure_port("unix:" + path)
            except RuntimeError:  # the probe bound, gRPC did not: it says no more than that
                raise FailedPreconditionError(f"unable to listen on '{path}'") from None
            server.start()
        finally:
            os.umask(old_umask)
        self._bound_socket = path
        try:
            if gid != -1:
                os.chown(path, -1, gid)
                # The group must also reach the socket: give it search (x) on the directory we own.
                parent = os.path.dirname(path)
                st = os.stat(parent)
                if st.st_uid == os.geteuid():
                    os.chown(parent, -1, gid)
                    os.chmod(parent, (st.st_mode & 0o7777) | 0o010)
            os.chmod(path, self._config.socket_mode)
        except OSError as exc:
            server.stop(None)
            _unlink_socket(path)
            self._bound_socket = None
            raise FailedPreconditionError(
                f"unable to listen on '{path}': unable to set its group or mode: {exc.strerror or exc}") from None
        log.info("listening on unix socket %s (mode %o)", path, self._config.socket_mode)
        return server

    def _start_tcp(self, address: str) -> grpc.Server:
        cfg = self._config
        if not (cfg.tls_cert and cfg.tls_key and cfg.token_file):
            raise InvalidArgumentError(f"daemon.listen '{address}' needs tls_cert, tls_key and token_file")
        token = read_token(cfg.token_file)
        key, cert = _read_bytes(cfg.tls_key), _read_bytes(cfg.tls_cert)
        _probe_tcp(address)
        server = self._new_server(interceptors=(TokenInterceptor(token),), remote=True)
        try:
            port = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
        except RuntimeError:  # the probe bound, gRPC did not: it says no more than that
            port = 0
        if not port:
            raise FailedPreconditionError(f"unable to listen on '{address}'")
        server.start()
        self.tcp_port = port
        log.info("listening on %s (TLS, token required)", address)
        return server


def _check_socket_length(path: str) -> None:
    """A Unix socket path fits sun_path (108 bytes with its terminating NUL)."""
    size = len(os.fsencode(path))
    if size > UNIX_PATH_MAX:
        raise FailedPreconditionError(
            f"unable to listen on '{path}': the path is {size} bytes long, a Unix socket path may have at most "
            f"{UNIX_PATH_MAX}", hint="choose a shorter daemon.socket (or --socket)")


def _probe_unix(path: str) -> None:
    """Bind a plain socket at `path` and remove it again: the reason gRPC would not give."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.bind(path)
    except OSError as exc:
        raise FailedPreconditionError(f"unable to listen on '{path}': {exc.strerror or exc}") from None
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)
    finally:
        probe.close()


def _probe_tcp(address: str) -> None:
    """Bind plain sockets where gRPC will listen (it listens if any address of the name binds);
    when none binds, the reason of the first. Port 0 and what does not parse are left to gRPC."""
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not port_text.isdigit() or int(port_text) == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, int(port_text), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise FailedPreconditionError(f"unable to listen on '{address}': {exc.strerror}") from None
    failures: list[OSError] = []
    for family, kind, proto, _name, sockaddr in infos:
        probe = socket.socket(family, kind, proto)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(sockaddr)
            return
        except OSError as exc:
            failures.append(exc)
        finally:
            probe.close()
    if failures:
        why = failures[0].strerror or failures[0]
        raise FailedPreconditionError(f"unable to listen on '{address}': {why}")


def _prepare_socket_path(path: str) -> None:
    """Create the socket's directory; remove a stale socket, refuse a live one or a non-socket."""
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise FailedPreconditionError(
            f"unable to listen on '{path}': unable to create '{exc.filename or directory}': {exc.strerror or exc}"
        ) from None
    if check_socket_path(path) == "stale":
        try:
            os.unlink(path)  # nobody answers: a leftover of a daemon that died
        except OSError as exc:
            raise FailedPreconditionError(
                f"unable to listen on '{path}': unable to remove the stale socket: {exc.strerror or exc}") from None


def _unlink_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass


def _group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise InvalidArgumentError(f"unknown socket group '{name}'") from None


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise InvalidArgumentError(f"unable to read '{path}': {exc.strerror}") from exc

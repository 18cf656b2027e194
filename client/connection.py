"""How the client reaches cairnd: a Unix socket by default, or TCP with TLS and a token.

The socket is --socket, else $CAIRN_SOCKET, else the daemon's own default rule, which both
take from `cairn.protocol`: $XDG_RUNTIME_DIR/cairn/cairnd.sock, /run/cairn/cairnd.sock for
root, else cairnd.sock in the daemon's home ($CAIRN_HOME, systemd's $STATE_DIRECTORY,
~/.local/share/cairn). A remote daemon (--address HOST:PORT) is always
reached over TLS; the token (--token, --token-file or $CAIRN_TOKEN) rides on every call.
A socket path that is not UTF-8 (gRPC names it as text) and a port outside 1-65535 are refused
as invalid arguments before any connection.

The channel sets no keepalive, on purpose: gRPC then gives the client no ping, SETTINGS or
TCP_USER_TIMEOUT deadline of its own, so a `cairn` that was suspended (SIGSTOP, a laptop asleep)
finds its call where it left it; how long a daemon waits on a suspended client is the daemon's
choice (its stall timeout). The price: a daemon whose host vanishes without closing the
connection leaves a call that has no deadline waiting until it is interrupted.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import socket
import stat
from dataclasses import dataclass

import grpc
from cairn import protocol
from cairn.errors import InvalidArgumentError
from cairn.fsio.names import shown
from cairn.proto.cairn.v1 import cairn_pb2_grpc

MAX_MESSAGE_BYTES = protocol.CLIENT_MAX_MESSAGE_BYTES


def default_socket(env: dict[str, str] | None = None) -> str:
    """The socket path cairnd uses when its configuration names none."""
    return protocol.default_socket(env=env)


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect: a socket path, or an address with TLS settings and a token."""

    socket: str | None = None
    address: str | None = None
    tls_ca: str | None = None
    tls_server_name: str | None = None
    token: str | None = None

    def describe(self) -> str:
        return self.address if self.address else f"unix socket '{self.socket}'"


def resolve_endpoint(
    socket: str | None = None,
    address: str | None = None,
    tls_ca: str | None = None,
    tls_server_name: str | None = None,
    token: str | None = None,
    token_file: str | None = None,
    env: dict[str, str] | None = None,
) -> Endpoint:
    """Apply the precedence rules of the module docstring to the given options."""
    environ = os.environ if env is None else env
    if address:
        if socket:
            raise InvalidArgumentError("--socket and --address exclude each other")
        if not re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]/\s]+):\d{1,5}", address):
            raise InvalidArgumentError(f"invalid --address '{address}': give HOST:PORT "
                                       "(an IPv6 address as [ADDR]:PORT)")
        port = int(address.rsplit(":", 1)[1])
        if not 1 <= port <= 65535:  # gRPC would take the port modulo 65536 and reach another one
            raise InvalidArgumentError(f"invalid --address '{address}': port {port} is outside 1-65535")
        if token and token_file:
            raise InvalidArgumentError("--token and --token-file exclude each other")
        if token_file:
            token = _read_token(token_file)
        token = token or environ.get("CAIRN_TOKEN") or None
        return Endpoint(address=address, tls_ca=tls_ca, tls_server_name=tls_server_name, token=token)
    path = socket or environ.get("CAIRN_SOCKET") or default_socket(environ)
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # gRPC names a socket as text: a byte that is not UTF-8 cannot be reached
        raise InvalidArgumentError(f"socket path '{shown(os.fsencode(path))}' is not valid UTF-8") from None
    return Endpoint(socket=os.path.abspath(path))


def socket_problem(path: str) -> str | None:
    """Why nothing can answer on the socket path, in words (gRPC's own are a dump), or None when
    a socket is there and this process may connect to it (something else went wrong). A socket
    this user may not connect to (its mode and group leave the user out) says so, with its
    owner, group and mode: it is not "nothing listens"."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    if not stat.S_ISSOCK(st.st_mode):
        return "it is not a socket"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except PermissionError:
        return (f"Permission denied (the socket is {_owner_text(st)}, mode {stat.S_IMODE(st.st_mode):04o}; "
                f"this user is {_user_text(os.geteuid())})")
    except OSError:
        return None
    finally:
        probe.close()
    return None


def _owner_text(st: os.stat_result) -> str:
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"owner {_user_text(st.st_uid)}, group {group}"


def _user_text(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def open_channel(endpoint: Endpoint) -> grpc.Channel:
    """A channel to the endpoint (connects lazily, on the first call)."""
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    if endpoint.socket:
        return grpc.insecure_channel("unix:" + endpoint.socket, options=options)
    root = _read_file(endpoint.tls_ca) if endpoint.tls_ca else None
    if root is not None and b"-----BEGIN CERTIFICATE-----" not in root:
        raise InvalidArgumentError(f"--tls-ca '{endpoint.tls_ca}' holds no certificate (PEM, "
                                   "'-----BEGIN CERTIFICATE-----')")
    creds = grpc.ssl_channel_credentials(root_certificates=root)
    if endpoint.token:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(endpoint.token))
    if endpoint.tls_server_name:
        options.append(("grpc.ssl_target_name_override", endpoint.tls_server_name))
    return grpc.secure_channel(endpoint.address, creds, options=options)


class Connection:
    """A channel and the Cairn stub on it; use as a context manager."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.channel = open_channel(endpoint)
        self.stub = cairn_pb2_grpc.CairnStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise InvalidArgumentError(f"unable to read '{path}': {exc.strerror}") from exc


def _read_token(path: str) -> str:
    token = _read_file(path).decode("utf-8", "replace").strip()
    if not token:
        raise InvalidArgumentError(f"token file '{path}' is empty")
    return token

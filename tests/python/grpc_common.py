"""What the gRPC test servers and clients share: stub imports, addresses, options, errors by id."""

import re
import sys

try:
    import grpc
    import grpc_predict_v2_pb2  # noqa: F401  (generated from mirror-daemon/proto)
except ImportError as error:  # run outside the prepared environment
    sys.exit(
        f"{error}: run this with the interpreter of the test virtualenv and its generated stubs on "
        "PYTHONPATH (tests/src/python.rs prepares both; `cargo xtask setup` creates them)"
    )

MIB = 1 << 20

COMPRESSION = {
    "none": grpc.Compression.NoCompression,
    "gzip": grpc.Compression.Gzip,
    "deflate": grpc.Compression.Deflate,
}


def message_size_options(max_message_mb):
    """Channel/server options that let messages of up to `max_message_mb` MiB through."""
    limit = int(max_message_mb * MIB)
    return [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]


def split_host_port(addr):
    """("198.18.0.2", 8081) of "198.18.0.2:8081"; ("fd00::2", 8081) of "[fd00::2]:8081"."""
    match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", addr)
    if not match:
        raise ValueError(f"address {addr!r} is not HOST:PORT or [V6]:PORT")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    return host, port


def join_host_port(host, port):
    """The inverse of split_host_port (brackets around IPv6 hosts, as Rust's SocketAddr prints)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def add_server_arguments(parser):
    """Options every test server takes."""
    parser.add_argument(
        "--listen",
        action="append",
        required=True,
        metavar="ADDR",
        help="address to serve on, repeatable: 198.18.0.2:8081, [fd00::2]:8081, 127.0.0.1:0 (any port)",
    )
    parser.add_argument("--model-name", default="demo", help="the model's name (default demo)")
    parser.add_argument("--model-version", default="1", help="the model's version (default 1)")
    parser.add_argument(
        "--disagree-percent",
        type=float,
        default=0.0,
        help="share of rows (0-100) whose top two labels this model swaps (a disagreeing candidate)",
    )
    parser.add_argument("--delay-ms", type=float, default=0.0, help="delay before each answer")
    parser.add_argument(
        "--error-every",
        type=int,
        default=0,
        metavar="N",
        help="answer every Nth request with a gRPC error instead (by the number ending the request id)",
    )
    parser.add_argument(
        "--error-code",
        default="INVALID_ARGUMENT",
        help="status code name of those errors (default INVALID_ARGUMENT)",
    )
    parser.add_argument(
        "--compression",
        choices=sorted(COMPRESSION),
        default="none",
        help="compress responses (to clients that accept it)",
    )
    parser.add_argument(
        "--max-message-mb",
        type=float,
        default=128.0,
        help="largest message received or sent, MiB (default 128)",
    )
    parser.add_argument(
        "--max-concurrent-streams",
        type=int,
        default=0,
        help="SETTINGS_MAX_CONCURRENT_STREAMS the server announces (default: grpc's)",
    )


def status_code(name):
    """grpc.StatusCode of its name (INVALID_ARGUMENT, UNAVAILABLE, ...)."""
    try:
        return grpc.StatusCode[name.upper()]
    except KeyError:
        raise SystemExit(f"unknown gRPC status code {name!r}") from None


def request_number(request_id):
    """The number that ends a request id ("req-17" -> 17), or None."""
    match = re.search(r"(\d+)$", request_id)
    return int(match.group(1)) if match else None


def errs(request_id, every):
    """Whether `--error-every every` makes the request with this id fail: numbers k with
    (k + 1) % every == 0, so of req-0, req-1, ... every Nth one (req-{N-1}, req-{2N-1}, ...)."""
    if every <= 0:
        return False
    number = request_number(request_id)
    return number is not None and (number + 1) % every == 0


def error_message(request_id, every):
    """The grpc-message of a request failed by --error-every (unique per request)."""
    return f"request {request_id} rejected: every {every}th request fails (--error-every)"


async def serve(server, addresses):
    """Binds every address, starts, prints "listening on ADDR" per address, and serves forever."""
    bound = []
    for addr in addresses:
        host, port = split_host_port(addr)
        actual = server.add_insecure_port(join_host_port(host, port))
        if actual == 0:
            raise SystemExit(f"cannot listen on {addr}")
        bound.append(join_host_port(host, actual))
    await server.start()
    for addr in bound:
        print(f"listening on {addr}", flush=True)
    await server.wait_for_termination()


def new_server(args):
    """A grpc.aio server configured by the common options (call inside the event loop)."""
    return grpc.aio.server(compression=COMPRESSION[args.compression], options=server_options(args))


def server_options(args):
    options = message_size_options(args.max_message_mb)
    if args.max_concurrent_streams > 0:
        options.append(("grpc.max_concurrent_streams", args.max_concurrent_streams))
    # One server per port: never share a port with another process by SO_REUSEPORT.
    options.append(("grpc.so_reuseport", 0))
    return options

"""A gRPC load client for the tests and the demo that writes down the truth of every call.

Subcommands:
  infer    Open Inference Protocol /inference.GRPCInferenceService/ModelInfer (unary)
  predict  TensorFlow Serving /tensorflow.serving.PredictionService/Predict (unary)
  chat     /mirror.test.Echo/Chat (bidirectional streaming, one answer per message)
  health   ServerLive, ServerReady, ModelReady and ModelMetadata once; prints one JSON object

Calls go over ONE long-lived channel (one HTTP/2 connection) unless --channels K (K connections,
calls dealt round-robin) or --fresh-channel (a new connection per call). --concurrency C keeps up
to C calls in flight at once, so their streams interleave on a connection. Request messages are
serialized here and handed to gRPC as bytes, and responses are taken as bytes, so the hashes in
the truth file are of exactly the messages that crossed the wire (before any grpc-encoding).

The truth file (--truth FILE) has one JSON object per line, written as calls complete (sort by
"index"); see README.md beside this script for every field.

--pause-after K: after the first K calls have completed, print "paused after K calls", keep the
connections open and idle, and go on when --resume-file appears or on SIGUSR1.
"""

import argparse
import asyncio
import hashlib
import json
import os
import signal
import struct
import sys
import time
from array import array

import grpc_common
from grpc_common import grpc

import grpc_predict_v2_pb2 as oip
import mirror_model
import stream_test_pb2 as echo
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

INFER = "/inference.GRPCInferenceService/ModelInfer"
PREDICT = "/tensorflow.serving.PredictionService/Predict"
CHAT = "/mirror.test.Echo/Chat"
HEALTH = "/inference.GRPCInferenceService/"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def f32_bits(raw):
    return list(struct.unpack(f"<{len(raw) // 4}I", raw))


def rows_of(bits, columns):
    return [bits[i : i + columns] for i in range(0, len(bits), columns)] if columns else []


class Plan:
    """What request `index` carries: its id, rows and the encoded message."""

    def __init__(self, args):
        self.args = args

    def request_id(self, index):
        return f"{self.args.id_prefix}{index}"

    def rows(self, index):
        return self.args.rows if self.args.rows is not None else 1 + index % 4

    def features_raw(self, index):
        return mirror_model.request_features_raw(index, self.rows(index), self.args.features)

    def typed(self, index):
        mode = self.args.input
        return mode == "typed" or (mode == "mixed" and index % 2 == 1)

    def infer_request(self, index, raw):
        args = self.args
        request = oip.ModelInferRequest(
            model_name=args.model_name, model_version=args.model_version, id=self.request_id(index)
        )
        tensor = request.inputs.add(name="features", datatype="FP32", shape=[self.rows(index), args.features])
        if self.typed(index):
            tensor.contents.fp32_contents.extend(array("f", raw))
        else:
            request.raw_input_contents.append(raw)
        return request.SerializeToString(deterministic=True)

    def predict_request(self, index, raw):
        args = self.args
        request = predict_pb2.PredictRequest()
        request.model_spec.name = args.model_name
        if args.model_version:
            request.model_spec.version.value = int(args.model_version)
        if args.signature_name:
            request.model_spec.signature_name = args.signature_name
        dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in (self.rows(index), args.features)]
        features = request.inputs["features"]
        features.dtype = types_pb2.DT_FLOAT
        features.tensor_shape.dim.extend(dims)
        if self.typed(index):
            features.float_val.extend(array("f", raw))
        else:
            features.tensor_content = raw
        key = request.inputs["key"]
        key.dtype = types_pb2.DT_STRING
        key.tensor_shape.dim.add(size=1)
        key.string_val.append(self.request_id(index).encode())
        return request.SerializeToString(deterministic=True)


def infer_probabilities(response_bytes):
    response = oip.ModelInferResponse.FromString(response_bytes)
    for position, output in enumerate(response.outputs):
        if output.name == "probabilities":
            if response.raw_output_contents:
                return response.raw_output_contents[position]
            return array("f", output.contents.fp32_contents).tobytes()
    return b""


def predict_probabilities(response_bytes):
    response = predict_pb2.PredictResponse.FromString(response_bytes)
    tensor = response.outputs.get("probabilities")
    if tensor is None:
        return b""
    return tensor.tensor_content or array("f", tensor.float_val).tobytes()


class Channels:
    """The connections calls go over: K long-lived ones, or a new one per call."""

    def __init__(self, args):
        self.args = args
        self.options = grpc_common.message_size_options(args.max_message_mb) + [
            # Each channel its own connection (C-core otherwise shares one between equal channels).
            ("grpc.use_local_subchannel_pool", 1),
            # One call, one HTTP/2 stream: no transparent retries on a new stream.
            ("grpc.enable_retries", 0),
            # Keep an idle connection open (the default drops it after 30 minutes).
            ("grpc.client_idle_timeout_ms", 2**31 - 1),
        ]
        self.long_lived = []

    def _new(self):
        return grpc.aio.insecure_channel(
            self.args.target, options=self.options, compression=grpc_common.COMPRESSION[self.args.compression]
        )

    async def open(self):
        if not self.args.fresh_channel:
            self.long_lived = [self._new() for _ in range(self.args.channels)]
            for channel in self.long_lived:
                await asyncio.wait_for(channel.channel_ready(), self.args.connect_timeout)

    async def get(self, index):
        """(channel number, channel, whether the caller closes it) for call `index`."""
        if self.args.fresh_channel:
            channel = self._new()
            await asyncio.wait_for(channel.channel_ready(), self.args.connect_timeout)
            return index, channel, True
        number = index % len(self.long_lived)
        return number, self.long_lived[number], False

    async def close(self):
        for channel in self.long_lived:
            await channel.close()


class Truth:
    """The truth file: one JSON line per call (or per chat message), flushed as written."""

    def __init__(self, path):
        self.file = open(path, "w", encoding="utf-8") if path else None
        self.ok = 0
        self.errors = 0

    def write(self, line):
        if line["code"] == 0:
            self.ok += 1
        else:
            self.errors += 1
        if self.file:
            self.file.write(json.dumps(line, separators=(",", ":")) + "\n")
            self.file.flush()


def status_fields(code, details):
    """The truth's status fields of a call that ended with `code` (a grpc.StatusCode)."""
    if code == grpc.StatusCode.OK:
        return {"code": 0, "status": "OK", "message": None}
    return {"code": code.value[0], "status": code.name, "message": details}


async def unary_call(args, plan, channels, truth, index):
    method = INFER if args.command == "infer" else PREDICT
    raw = plan.features_raw(index)
    request = plan.infer_request(index, raw) if args.command == "infer" else plan.predict_request(index, raw)
    number, channel, close = await channels.get(index)
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    response, error = None, None
    sent_ns = time.time_ns()
    start = time.perf_counter()
    try:
        response = await call(request, timeout=args.timeout, metadata=args.metadata_pairs)
    except grpc.aio.AioRpcError as rpc_error:
        error = rpc_error
    latency_ms = (time.perf_counter() - start) * 1000.0
    if close:
        await channel.close()
    line = {
        "index": index,
        "id": plan.request_id(index),
        "method": method,
        "channel": number,
        "rows": plan.rows(index),
        "request_sha256": sha256(request),
        "request_bytes": len(request),
        **(
            status_fields(error.code(), error.details()) if error else status_fields(grpc.StatusCode.OK, None)
        ),
        "response_sha256": sha256(response) if response is not None else None,
        "response_bytes": len(response) if response is not None else None,
        "latency_ms": round(latency_ms, 3),
        "sent_unix_ns": sent_ns,
    }
    if args.with_tensors:
        line["features"] = rows_of(f32_bits(raw), args.features)
        if response is not None:
            probabilities = (infer_probabilities if args.command == "infer" else predict_probabilities)(
                response
            )
            line["probabilities"] = rows_of(f32_bits(probabilities), mirror_model.CLASSES)
    truth.write(line)


def chat_payload(stream, seq, size):
    """Deterministic payload of message `seq` of stream `stream`, `size` bytes."""
    seed = f"{stream}/{seq}:".encode()
    return (seed * (size // len(seed) + 1))[:size]


async def chat_call(args, plan, channels, truth, index):
    number, channel, close = await channels.get(index)
    call = channel.stream_stream(CHAT, request_serializer=None, response_deserializer=None)(
        timeout=args.timeout, metadata=args.metadata_pairs
    )
    lines = []
    for seq in range(args.messages):
        message = echo.Msg(
            id=f"{plan.request_id(index)}-{seq}",
            seq=seq,
            payload=chat_payload(index, seq, args.payload_bytes),
            fail=seq == args.fail_at,
        ).SerializeToString(deterministic=True)
        line = {
            "index": index * args.messages + seq,
            "id": f"{plan.request_id(index)}-{seq}",
            "method": CHAT,
            "channel": number,
            "stream": index,
            "seq": seq,
            "request_sha256": sha256(message),
            "request_bytes": len(message),
            "response_sha256": None,
            "response_bytes": None,
            "latency_ms": None,
            "sent_unix_ns": time.time_ns(),
        }
        lines.append(line)
        start = time.perf_counter()
        try:
            await call.write(message)
            answer = await call.read()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            break
        if answer is grpc.aio.EOF:
            break
        line["latency_ms"] = round((time.perf_counter() - start) * 1000.0, 3)
        line["response_sha256"] = sha256(answer)
        line["response_bytes"] = len(answer)
    try:
        await call.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass
    # Every message of the stream carries the stream's final status.
    status = status_fields(await call.code(), await call.details())
    if close:
        await channel.close()
    for line in lines:
        line.update(status)
        truth.write(line)


class Pause:
    """Waits, connections open, until the resume file appears or SIGUSR1 arrives."""

    def __init__(self, resume_file):
        self.resume_file = resume_file
        self.event = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self.event.set)

    async def wait(self, done):
        print(f"paused after {done} calls", flush=True)
        while not self.event.is_set():
            if self.resume_file and os.path.exists(self.resume_file):
                break
            try:
                await asyncio.wait_for(self.event.wait(), 0.02)
            except asyncio.TimeoutError:
                pass
        print(f"resumed after {done} calls", flush=True)


async def drive(args):
    plan = Plan(args)
    channels = Channels(args)
    truth = Truth(args.truth)
    pause = Pause(args.resume_file) if args.pause_after is not None else None
    one = chat_call if args.command == "chat" else unary_call
    await channels.open()
    slots = asyncio.Semaphore(args.concurrency)
    tasks = set()
    began = time.perf_counter()

    async def run(index):
        try:
            await one(args, plan, channels, truth, index)
        finally:
            slots.release()

    for index in range(args.requests):
        if pause is not None and index == args.pause_after:
            if tasks:
                await asyncio.gather(*tasks)
            await pause.wait(index)
        if args.rate:
            delay = began + index / args.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await slots.acquire()
        task = asyncio.create_task(run(index))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    if pause is not None and args.pause_after >= args.requests:
        await pause.wait(args.requests)
    await channels.close()
    elapsed = time.perf_counter() - began
    print(
        f"done: {args.requests} calls, {truth.ok + truth.errors} truth lines, {truth.ok} ok, "
        f"{truth.errors} errors, {elapsed:.3f} s",
        flush=True,
    )
    if args.fail_on_error and truth.errors:
        sys.exit(1)


async def health(args):
    """ServerLive, ServerReady, ModelReady and ModelMetadata; one JSON object on stdout."""
    import grpc_predict_v2_pb2_grpc as oip_grpc
    from google.protobuf import json_format

    async with grpc.aio.insecure_channel(args.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), args.connect_timeout)
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        out = {
            "live": (await stub.ServerLive(oip.ServerLiveRequest(), timeout=args.timeout)).live,
            "ready": (await stub.ServerReady(oip.ServerReadyRequest(), timeout=args.timeout)).ready,
        }
        name, version = args.model_name, args.model_version
        ready = await stub.ModelReady(oip.ModelReadyRequest(name=name, version=version), timeout=args.timeout)
        out["model_ready"] = ready.ready
        try:
            metadata = await stub.ModelMetadata(
                oip.ModelMetadataRequest(name=name, version=version), timeout=args.timeout
            )
            out["metadata"] = json_format.MessageToDict(metadata, preserving_proto_field_name=True)
        except grpc.aio.AioRpcError as error:
            out["metadata_error"] = status_fields(error.code(), error.details())
    print(json.dumps(out, sort_keys=True), flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in [
        ("infer", "Open Inference Protocol ModelInfer"),
        ("predict", "TF Serving Predict"),
        ("chat", "bidirectional Echo/Chat streams"),
        ("health", "OIP ServerLive/ServerReady/ModelReady/ModelMetadata"),
    ]:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--target", required=True, help="HOST:PORT or [V6]:PORT of the server")
        sub.add_argument("--timeout", type=float, default=60.0, help="deadline of each call, s (default 60)")
        sub.add_argument("--connect-timeout", type=float, default=10.0, help="s to wait for a connection")
        sub.add_argument("--model-name", default="demo")
        sub.add_argument(
            "--model-version",
            default="",
            help="model version to ask for (default: none, the server's choice)",
        )
        if name == "health":
            continue
        sub.add_argument(
            "--requests", type=int, default=10, help="calls (chat: streams) to make (default 10)"
        )
        sub.add_argument("--concurrency", type=int, default=1, help="calls in flight at once (default 1)")
        sub.add_argument(
            "--channels", type=int, default=1, help="long-lived connections, round-robin (default 1)"
        )
        sub.add_argument("--fresh-channel", action="store_true", help="a new connection for every call")
        sub.add_argument(
            "--compression",
            choices=sorted(grpc_common.COMPRESSION),
            default="none",
            help="compress request messages (grpc-encoding)",
        )
        sub.add_argument(
            "--rate", type=float, default=0.0, help="start calls at this rate per s (default: at once)"
        )
        sub.add_argument("--id-prefix", default="req-", help="request ids are PREFIX + index (default req-)")
        sub.add_argument(
            "--metadata",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="custom metadata on every call, repeatable",
        )
        sub.add_argument("--truth", help="write the truth file (JSON lines) here")
        sub.add_argument("--pause-after", type=int, help="after this many calls, wait (see --resume-file)")
        sub.add_argument(
            "--resume-file", help="with --pause-after: go on once this file exists (or on SIGUSR1)"
        )
        sub.add_argument(
            "--max-message-mb", type=float, default=128.0, help="largest message, MiB (default 128)"
        )
        sub.add_argument("--fail-on-error", action="store_true", help="exit 1 if any call ended in an error")
        if name == "chat":
            sub.add_argument("--messages", type=int, default=3, help="messages per stream (default 3)")
            sub.add_argument(
                "--payload-bytes", type=int, default=64, help="payload of each message (default 64)"
            )
            sub.add_argument(
                "--fail-at",
                type=int,
                default=-1,
                metavar="SEQ",
                help="ask the server to fail each stream at this message",
            )
        else:
            sub.add_argument("--rows", type=int, help="rows per request (default: 1 + index %% 4)")
            sub.add_argument("--features", type=int, default=4, help="features per row (default 4)")
            sub.add_argument(
                "--input",
                choices=["raw", "typed", "mixed"],
                default="raw",
                help="features as raw bytes (raw_input_contents / tensor_content), typed values "
                "(fp32_contents / float_val), or alternating, odd indexes typed (default raw)",
            )
            sub.add_argument(
                "--with-tensors",
                action="store_true",
                help="also write the features and probabilities (f32 bit patterns) to the truth",
            )
            if name == "predict":
                sub.add_argument("--signature-name", default="", help="model_spec.signature_name to send")
    args = parser.parse_args(argv)
    if args.command != "health":
        pairs = []
        for item in args.metadata:
            key, sep, value = item.partition("=")
            if not sep:
                parser.error(f"--metadata {item!r} is not KEY=VALUE")
            pairs.append((key.lower(), value))
        args.metadata_pairs = tuple(pairs)
        if args.concurrency < 1 or args.channels < 1 or args.requests < 0:
            parser.error("--concurrency and --channels must be at least 1, --requests at least 0")
        if args.resume_file and args.pause_after is None:
            parser.error("--resume-file needs --pause-after")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    asyncio.run(health(args) if args.command == "health" else drive(args))


if __name__ == "__main__":
    main()

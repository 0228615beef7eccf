"""A streaming OpenAI-compatible test LLM server on aiohttp (its HTTP/1.1 server, chunked transfer).

POST /v1/chat/completions and POST /v1/completions, with "stream": true (text/event-stream:
`data: {chunk}` events, `data: [DONE]` last) or without (one JSON answer). Chunks are shaped like
OpenAI's. The text comes from llm_model.py: deterministic words of the prompt, one token each.

Options (see README.md beside this script): --listen ADDR (repeatable, port 0 picks one),
--ttft-ms, --token-delay-ms, --variant --differ-percent P, --stall-after N [--stall-percent P],
--error-midstream-percent P, --gzip, --never-stream, --model-name NAME, --words N.
"""

import argparse
import asyncio
import json
import socket
import time
import uuid
import zlib

from aiohttp import web

import llm_model

STALL_SECONDS = 600


class Model:
    def __init__(self, args):
        self.args = args

    def choice_words(self, prompt, choice):
        if self.args.variant:
            return llm_model.candidate_words(prompt, choice, self.args.differ_percent, self.args.words)
        return llm_model.words(prompt, choice, self.args.words)


def tool_calls_of(body, prompt, tokens):
    """With `tools`: one or two calls of the first tool, its arguments made from the answer's words."""
    tools = body.get("tools")
    if not tools:
        return None
    name = tools[0].get("function", {}).get("name", "tool")
    count = 1 + llm_model.share("tools", prompt) % 2
    calls = []
    for i in range(count):
        half = tokens[i::count]
        arguments = json.dumps({"query": llm_model.text_of(half), "part": i})
        calls.append({"id": f"call_{llm_model.share(f'call/{i}', prompt):04d}{i}", "name": name, "arguments": arguments})
    return calls


def pieces(text, size=7):
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class Answer:
    """What the model answers to one request: per choice its tokens, finish reason and tool calls."""

    def __init__(self, model, kind, body):
        self.kind = kind
        self.prompt = llm_model.prompt_of(kind, body)
        n = body.get("n", 1) or 1
        if not isinstance(n, int) or n < 1 or n > 8:
            raise ValueError("n must be an integer from 1 to 8")
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise ValueError("max_tokens must be a positive integer")
        self.choices = []
        for index in range(n):
            full = model.choice_words(self.prompt, index)
            tokens = full if max_tokens is None else full[:max_tokens]
            calls = tool_calls_of(body, self.prompt, tokens) if kind == "chat" else None
            if calls:
                finish = "tool_calls"
            else:
                finish = "length" if len(tokens) < len(full) else "stop"
            self.choices.append({"index": index, "tokens": tokens, "finish_reason": finish, "tool_calls": calls})
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.model = model.args.model_name or body.get("model") or "test-llm"
        self.object = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def usage(self):
        completion = sum(len(c["tokens"]) for c in self.choices)
        prompt = len(self.prompt.split())
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def chunk(self, choices, usage=None, with_usage_field=False):
        out = {"id": self.id, "object": self.object, "created": self.created, "model": self.model, "choices": choices}
        if usage is not None or with_usage_field:
            out["usage"] = usage
        return out

    def events(self, include_usage):
        """The stream's chunks, in order, as (is_content, chunk): tokens of the choices round-robin."""
        events = []
        if self.kind == "chat":
            for c in self.choices:
                delta = {"role": "assistant", "content": ""} if not c["tool_calls"] else {"role": "assistant"}
                events.append((False, [{"index": c["index"], "delta": delta, "logprobs": None, "finish_reason": None}]))
        per_choice = []
        for c in self.choices:
            steps = []
            if c["tool_calls"]:
                for i, call in enumerate(c["tool_calls"]):
                    head = {"index": i, "id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": ""}}
                    steps.append({"tool_calls": [head]})
                    for piece in pieces(call["arguments"]):
                        steps.append({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
            else:
                for i, token in enumerate(c["tokens"]):
                    steps.append({"content": token if i == 0 else " " + token})
            per_choice.append(steps)
        for step in range(max(len(s) for s in per_choice)):
            for c, steps in zip(self.choices, per_choice):
                if step < len(steps):
                    events.append((True, [self.choice_delta(c["index"], steps[step], None)]))
        for c in self.choices:
            final = {} if self.kind == "chat" else {"text": ""}
            events.append((False, [self.choice_delta(c["index"], final, c["finish_reason"], final=True)]))
        chunks = [(content, self.chunk(choices, with_usage_field=include_usage)) for content, choices in events]
        if include_usage:
            chunks.append((False, self.chunk([], usage=self.usage())))
        return chunks

    def choice_delta(self, index, step, finish, final=False):
        if self.kind == "chat":
            return {"index": index, "delta": step, "logprobs": None, "finish_reason": finish}
        text = step.get("text", step.get("content", ""))
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}

    def whole(self):
        """The non-streamed answer."""
        choices = []
        for c in self.choices:
            text = llm_model.text_of(c["tokens"])
            if self.kind == "chat":
                message = {"role": "assistant", "content": None if c["tool_calls"] else text}
                if c["tool_calls"]:
                    message["tool_calls"] = [
                        {"id": t["id"], "type": "function", "function": {"name": t["name"], "arguments": t["arguments"]}}
                        for t in c["tool_calls"]
                    ]
                choices.append({"index": c["index"], "message": message, "logprobs": None, "finish_reason": c["finish_reason"]})
            else:
                choices.append({"index": c["index"], "text": text, "logprobs": None, "finish_reason": c["finish_reason"]})
        return {
            "id": self.id,
            "object": "chat.completion" if self.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage(),
        }


class Gzip:
    """Streamed gzip: each write is flushed (Z_SYNC_FLUSH) so events leave as they are made."""

    def __init__(self):
        self.z = zlib.compressobj(6, zlib.DEFLATED, 31)

    def part(self, data):
        return self.z.compress(data) + self.z.flush(zlib.Z_SYNC_FLUSH)

    def end(self):
        return self.z.flush(zlib.Z_FINISH)


def error(status, message):
    return web.json_response({"error": {"message": message, "type": "invalid_request_error", "code": status}}, status=status)


def handler(model, kind):
    args = model.args

    async def handle(request):
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error(400, "the body is not JSON")
        if not isinstance(body, dict):
            return error(400, "the body must be a JSON object")
        try:
            answer = Answer(model, kind, body)
        except ValueError as e:
            return error(400, str(e))
        headers = {}
        if "x-request-id" in request.headers:
            headers["x-request-id"] = request.headers["x-request-id"]
        gzip = Gzip() if args.gzip else None
        if gzip:
            headers["Content-Encoding"] = "gzip"
        stream = bool(body.get("stream")) and not args.never_stream
        if not stream:
            await asyncio.sleep(args.ttft_ms / 1000 + args.token_delay_ms / 1000 * max(len(c["tokens"]) - 1 for c in answer.choices))
            data = json.dumps(answer.whole()).encode()
            if gzip:
                data = gzip.part(data) + gzip.end()
            headers["Content-Type"] = "application/json"
            return web.Response(body=data, headers=headers)

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        headers.update({"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        response = web.StreamResponse(headers=headers)
        response.enable_chunked_encoding()
        await response.prepare(request)
        stall = args.stall_after is not None and llm_model.picked("stall", answer.prompt, args.stall_percent)
        fail = llm_model.picked("error", answer.prompt, args.error_midstream_percent)
        chunks = answer.events(include_usage)
        sent = 0
        first_content = True

        async def send(data):
            nonlocal sent
            if stall and sent >= args.stall_after:
                # Stop sending, connection left open: the shadow-stall case.
                await asyncio.sleep(STALL_SECONDS)
                raise ConnectionResetError("stalled stream given up")
            await response.write(gzip.part(data) if gzip else data)
            sent += 1

        try:
            contents = sum(1 for content, _ in chunks if content)
            seen = 0
            # As an engine streams: nothing until the first token is made (the role chunk comes with
            # it), then one event per token.
            await asyncio.sleep(args.ttft_ms / 1000)
            for content, chunk in chunks:
                if content:
                    if not first_content:
                        await asyncio.sleep(args.token_delay_ms / 1000)
                    first_content = False
                    seen += 1
                    if fail and seen > contents // 2:
                        await send(b"data: " + json.dumps(
                            {"error": {"message": "generation failed mid-stream (--error-midstream-percent)", "type": "server_error", "code": 500}}
                        ).encode() + b"\n\n")
                        break
                await send(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await send(b"data: [DONE]\n\n")
            if gzip:
                await response.write(gzip.end())
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass
        return response

    return handle


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", action="append", required=True, help="ADDR:PORT, [V6]:PORT; repeatable; port 0 picks one")
    p.add_argument("--model-name", default=None, help="the `model` of answers (default: the request's)")
    p.add_argument("--words", type=int, default=None, help="every answer exactly this many words (tokens), for load tests")
    p.add_argument("--ttft-ms", type=float, default=0.0, help="delay before the first token")
    p.add_argument("--token-delay-ms", type=float, default=0.0, help="delay before each later token")
    p.add_argument("--variant", action="store_true", help="answer as the candidate model (see --differ-percent)")
    p.add_argument("--differ-percent", type=float, default=10.0, help="with --variant: share of prompts whose answer has one word changed")
    p.add_argument("--stall-after", type=int, default=None, help="stop sending after N events, keeping the connection open")
    p.add_argument("--stall-percent", type=float, default=100.0, help="share of prompts --stall-after applies to")
    p.add_argument("--error-midstream-percent", type=float, default=0.0, help="share of prompts answered with an error event half-way")
    p.add_argument("--gzip", action="store_true", help="Content-Encoding: gzip, flushed per event")
    p.add_argument("--never-stream", action="store_true", help="answer JSON even when the request asks for a stream")
    args = p.parse_args()
    for name in ("differ_percent", "stall_percent", "error_midstream_percent"):
        value = getattr(args, name)
        if not 0 <= value <= 100:
            p.error(f"--{name.replace('_', '-')} must be between 0 and 100, not {value}")
    if args.words is not None and not 1 <= args.words <= 100_000:
        p.error(f"--words must be between 1 and 100000, not {args.words}")
    if args.stall_after is not None and args.stall_after < 0:
        p.error("--stall-after must be 0 or more")
    return args


def parse_listen(text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"--listen {text!r}: expected HOST:PORT or [V6]:PORT")
    return host.strip("[]"), int(port)


async def serve(args):
    model = Model(args)
    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v1/chat/completions", handler(model, "chat"))
    app.router.add_post("/v1/completions", handler(model, "completions"))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for listen in args.listen:
        host, port = parse_listen(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
        site = web.SockSite(runner, sock)
        await site.start()
        bound = sock.getsockname()
        shown = f"[{bound[0]}]:{bound[1]}" if family == socket.AF_INET6 else f"{bound[0]}:{bound[1]}"
        print(f"listening on {shown}", flush=True)
    await asyncio.Event().wait()


def main():
    args = parse_args()
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

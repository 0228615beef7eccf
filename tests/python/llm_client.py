"""An LLM load client on the official `openai` package that writes down what it got, per request.

It calls an OpenAI-compatible server at --base-url (`.../v1`) with client.chat.completions.create
and client.completions.create, streamed (stream=True) or not, exactly as an application would: the
package's own HTTP stack and SSE decoding, which closes the connection as soon as it reads
`data: [DONE]`. Each request carries an `x-request-id` header (--id-prefix + index), so records of
the traffic can be matched to the truth.

The truth file (--truth FILE) has one JSON object per line, written as requests end (sort by
"index"); see README.md beside this script for every field. Request i's shape (chat or completion,
streamed, usage chunk, tools, n, max_tokens, abort) follows from i and the --*-every options, and
its prompt from i and --seed, so two runs with the same options send the same prompts.
"""

import argparse
import concurrent.futures
import json
import sys
import threading
import time

import openai

import llm_model

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search_corpus",
            "description": "Search the test corpus.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}, "part": {"type": "integer"}},
                "required": ["query"],
            },
        },
    }
]


def every(i, k):
    return k > 0 and i % k == k - 1


class Plan:
    """What request i is."""

    def __init__(self, args, i):
        self.index = i
        self.id = f"{args.id_prefix}{i}"
        if args.api == "both":
            self.api = "chat" if i % 2 == 0 else "completions"
        else:
            self.api = args.api
        self.stream = not every(i, args.non_stream_every)
        self.include_usage = self.stream and every(i, args.usage_every)
        # Counted among the chat requests, which are every other one with --api both.
        chat_index = i // 2 if args.api == "both" else i
        self.tools = self.api == "chat" and every(chat_index, args.tools_every)
        self.n = 2 if every(i, args.choices_every) else 1
        self.max_tokens = args.short_max_tokens if every(i, args.max_tokens_every) else None
        self.abort_after = (
            args.abort_after_events if self.stream and args.abort_after_events and every(i, args.abort_every) else None
        )
        question = f"question {i} of run {args.seed}: what comes next?"
        if self.api == "chat":
            self.messages = [{"role": "system", "content": "You are the test model."}, {"role": "user", "content": question}]
            self.body = {"messages": self.messages}
        else:
            self.prompt_text = f"Continue, for {question}"
            self.body = {"prompt": self.prompt_text}
        self.prompt = llm_model.prompt_of(self.api, self.body)

    def kwargs(self, args):
        kw = {"model": args.model, "extra_headers": {"x-request-id": self.id}}
        if self.api == "chat":
            kw["messages"] = self.messages
        else:
            kw["prompt"] = self.prompt_text
        if self.stream:
            kw["stream"] = True
            if self.include_usage:
                kw["stream_options"] = {"include_usage": True}
        if self.tools:
            kw["tools"] = TOOLS
        if self.n != 1:
            kw["n"] = self.n
        if self.max_tokens is not None:
            kw["max_tokens"] = self.max_tokens
        return kw


class Assembly:
    """Choices as the client assembles them from deltas (or takes them whole)."""

    def __init__(self):
        self.choices = {}

    def choice(self, index):
        return self.choices.setdefault(index, {"index": index, "text": "", "finish_reason": None, "tool_calls": {}})

    def add_tool_delta(self, choice, delta):
        call = choice["tool_calls"].setdefault(delta.index, {"index": delta.index, "id": None, "name": None, "arguments": ""})
        if delta.id:
            call["id"] = delta.id
        if delta.function is not None:
            if delta.function.name:
                call["name"] = delta.function.name
            if delta.function.arguments:
                call["arguments"] += delta.function.arguments

    def chunk(self, api, chunk):
        """Folds one streamed chunk in; returns whether it carried generated content."""
        content = False
        for c in chunk.choices:
            choice = self.choice(c.index)
            if api == "chat":
                delta = c.delta
                if delta is not None and delta.content:
                    choice["text"] += delta.content
                    content = True
                for t in (delta.tool_calls or []) if delta is not None else []:
                    self.add_tool_delta(choice, t)
                    content = True
            elif c.text:
                choice["text"] += c.text
                content = True
            if c.finish_reason:
                choice["finish_reason"] = c.finish_reason
        return content

    def whole(self, api, answer):
        for c in answer.choices:
            choice = self.choice(c.index)
            choice["finish_reason"] = c.finish_reason
            if api == "chat":
                choice["text"] = c.message.content or ""
                for i, t in enumerate(c.message.tool_calls or []):
                    choice["tool_calls"][i] = {"index": i, "id": t.id, "name": t.function.name, "arguments": t.function.arguments}
            else:
                choice["text"] = c.text

    def result(self):
        out = []
        for index in sorted(self.choices):
            c = dict(self.choices[index])
            c["tool_calls"] = [c["tool_calls"][k] for k in sorted(c["tool_calls"])]
            out.append(c)
        return out


def call(args, client, plan):
    line = {
        "index": plan.index,
        "id": plan.id,
        "api": plan.api,
        "path": "/v1/chat/completions" if plan.api == "chat" else "/v1/completions",
        "stream": plan.stream,
        "include_usage": plan.include_usage,
        "tools": plan.tools,
        "n": plan.n,
        "max_tokens": plan.max_tokens,
        "prompt": plan.prompt,
        "aborted": False,
        "error": None,
        "usage": None,
        "events": 0,
        "ttft_ms": None,
    }
    assembly = Assembly()
    line["sent_unix_ns"] = time.time_ns()
    started = time.monotonic()
    api = client.chat.completions if plan.api == "chat" else client.completions
    try:
        answer = api.create(**plan.kwargs(args))
        if plan.stream:
            with answer as stream:
                for chunk in stream:
                    line["events"] += 1
                    if assembly.chunk(plan.api, chunk) and line["ttft_ms"] is None:
                        line["ttft_ms"] = (time.monotonic() - started) * 1000
                    if chunk.usage is not None:
                        line["usage"] = chunk.usage.model_dump()
                    if plan.abort_after is not None and line["events"] >= plan.abort_after:
                        line["aborted"] = True
                        break
        else:
            assembly.whole(plan.api, answer)
            line["usage"] = answer.usage.model_dump() if answer.usage else None
    except openai.OpenAIError as e:
        line["error"] = f"{type(e).__name__}: {e}"
    line["e2e_ms"] = (time.monotonic() - started) * 1000
    line["ended_unix_ns"] = time.time_ns()
    line["choices"] = assembly.result()
    return line


def warm_up(client):
    """Loads what the package loads lazily on its first call (resources, response types), so the
    first requests' timings are not the import's: no request is sent."""
    _ = client.chat.completions, client.completions
    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
             "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]}
    openai.types.chat.ChatCompletionChunk.model_validate(chunk)
    openai.types.Completion.model_validate(
        {"id": "x", "object": "text_completion", "created": 0, "model": "m",
         "choices": [{"index": 0, "text": "x", "finish_reason": "stop", "logprobs": None}]}
    )


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True, help="the server's OpenAI API root, e.g. http://198.18.0.2:8000/v1")
    p.add_argument("--requests", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=1, help="requests in flight at once (one connection pool each)")
    p.add_argument("--id-prefix", default="req-", help="x-request-id is this + the index")
    p.add_argument("--seed", default="llm", help="prompts are made from the index and this")
    p.add_argument("--model", default="test-llm")
    p.add_argument("--api", choices=["chat", "completions", "both"], default="both", help="both: even indexes chat, odd completions")
    p.add_argument("--non-stream-every", type=int, default=0, help="every Kth request not streamed (0: all streamed)")
    p.add_argument("--usage-every", type=int, default=0, help="every Kth stream asks for the usage chunk")
    p.add_argument("--tools-every", type=int, default=0, help="every Kth chat request offers a tool (answered with tool calls)")
    p.add_argument("--choices-every", type=int, default=0, help="every Kth request asks for n=2")
    p.add_argument("--max-tokens-every", type=int, default=0, help="every Kth request sets max_tokens")
    p.add_argument("--short-max-tokens", type=int, default=5, help="that max_tokens")
    p.add_argument("--abort-after-events", type=int, default=0, help="close streams after K events (see --abort-every)")
    p.add_argument("--abort-every", type=int, default=1, help="which streams --abort-after-events closes")
    p.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    p.add_argument("--truth", required=True, help="write the truth file here")
    args = p.parse_args()
    if args.requests < 0 or args.concurrency < 1:
        p.error("--requests must be >= 0 and --concurrency >= 1")
    if args.requests > 100_000:
        p.error("--requests is bounded to 100000")
    return args


def main():
    args = parse_args()
    local = threading.local()
    lock = threading.Lock()

    def client():
        if not hasattr(local, "client"):
            local.client = openai.OpenAI(base_url=args.base_url, api_key="sk-test", max_retries=0, timeout=args.timeout)
        return local.client

    warm_up(client())

    started = time.monotonic()
    counts = {"lines": 0, "errors": 0, "aborted": 0}
    with open(args.truth, "w") as truth:

        def one(i):
            line = call(args, client(), Plan(args, i))
            with lock:
                truth.write(json.dumps(line) + "\n")
                truth.flush()
                counts["lines"] += 1
                counts["errors"] += line["error"] is not None
                counts["aborted"] += line["aborted"]

        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            for f in [pool.submit(one, i) for i in range(args.requests)]:
                f.result()
    print(
        f"done: {args.requests} requests, {counts['lines']} truth lines, {counts['errors']} errors, "
        f"{counts['aborted']} aborted, {time.monotonic() - started:.1f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

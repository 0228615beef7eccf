"""Many streamed LLM answers held open at once, on aiohttp's client (asyncio): the load of
`cargo xtask bench --which mirror-llm`.

It opens --streams chat completions with "stream": true to --url at once, one connection each (a
thread per stream, as llm_client.py's openai workers need, does not scale to a thousand; one event
loop does), reads each event stream line by line and, as the official `openai` client does, closes
the connection as soon as it reads `data: [DONE]`. Per stream it times, on the monotonic clock from
just before the request was sent, the first event carrying content (TTFT) and [DONE] (E2E), and
counts the `data:` events. It prints one JSON object on stdout at the end:

    {"streams", "completed", "failed": {reason: count}, "peak_open", "events_min", "events_max",
     "ttft_ms": {"p50", "p99", "max"}, "e2e_ms": {"p50", "p99", "max"}, "seconds"}

`completed` counts streams answered 200 that reached [DONE]; `peak_open` is the most streams that
were open (answer headers read, [DONE] not yet) at the same moment.
"""

import argparse
import asyncio
import json
import sys
import time

import aiohttp


def content_of(data):
    """Whether a chunk carries generated content (text, or a tool call)."""
    try:
        chunk = json.loads(data)
    except ValueError:
        return False
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or choice.get("text"):
            return True
    return False


class Tally:
    def __init__(self):
        self.open = 0
        self.peak_open = 0
        self.results = []
        self.failed = {}

    def opened(self):
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)

    def closed(self):
        self.open -= 1

    def fail(self, reason):
        self.failed[reason] = self.failed.get(reason, 0) + 1


async def one(session, args, i, tally, start):
    body = {
        "model": args.model,
        "messages": [{"role": "user", "content": f"load stream {i} of run {args.seed}"}],
        "stream": True,
    }
    headers = {"x-request-id": f"{args.id_prefix}{i}"}
    await start.wait()
    sent = time.monotonic()
    ttft = None
    events = 0
    try:
        async with session.post(args.url, json=body, headers=headers) as response:
            if response.status != 200:
                tally.fail(f"status {response.status}")
                return
            tally.opened()
            try:
                done = False
                async for line in response.content:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    events += 1
                    if data == b"[DONE]":
                        done = True
                        break
                    if ttft is None and content_of(data):
                        ttft = time.monotonic() - sent
                e2e = time.monotonic() - sent
                # As the openai client does: stop at [DONE] and drop the connection, whatever of
                # the chunked body is still to come.
                response.close()
            finally:
                tally.closed()
            if not done:
                tally.fail("no [DONE]")
                return
            tally.results.append((ttft, e2e, events))
    except asyncio.TimeoutError:
        tally.fail("timeout")
    except aiohttp.ClientError as e:
        tally.fail(type(e).__name__)


def quantiles(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    at = lambda q: values[min(len(values) - 1, int(q * len(values)))] * 1000
    return {"p50": at(0.5), "p99": at(0.99), "max": values[-1] * 1000}


async def run(args):
    tally = Tally()
    timeout = aiohttp.ClientTimeout(total=args.timeout, sock_connect=10)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    start = asyncio.Event()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(one(session, args, i, tally, start)) for i in range(args.streams)]
        await asyncio.sleep(0)
        began = time.monotonic()
        start.set()
        await asyncio.gather(*tasks)
        seconds = time.monotonic() - began
    events = [r[2] for r in tally.results]
    return {
        "streams": args.streams,
        "completed": len(tally.results),
        "failed": tally.failed,
        "peak_open": tally.peak_open,
        "events_min": min(events, default=0),
        "events_max": max(events, default=0),
        "ttft_ms": quantiles(r[0] for r in tally.results),
        "e2e_ms": quantiles(r[1] for r in tally.results),
        "seconds": seconds,
    }


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="the chat completions URL, e.g. http://198.18.0.2:8000/v1/chat/completions")
    p.add_argument("--streams", type=int, default=1000, help="streams opened at once (one connection each)")
    p.add_argument("--model", default="test-llm")
    p.add_argument("--id-prefix", default="load-", help="x-request-id is this + the index")
    p.add_argument("--seed", default="load", help="prompts are made from the index and this")
    p.add_argument("--timeout", type=float, default=300.0, help="per stream, seconds")
    args = p.parse_args()
    if not 1 <= args.streams <= 20_000:
        p.error("--streams must be between 1 and 20000")
    return args


def main():
    args = parse_args()
    print(json.dumps(asyncio.run(run(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The test LLM: deterministic answers derived from the prompt, shared by llm_server.py and the tests.

Every choice of a prompt is a sequence of words drawn from VOCABULARY by a SHA-256 counter stream
of the prompt and the choice index, so the same prompt always gets the same answer from any
server, and the tests can compute which answers a candidate changes. A word is one token.

`mirror_tests::llm` (tests/src/llm.rs) re-implements `share` and `differs` byte for byte; the
integration tests check the daemon's verdicts against that, so a drift between the two fails them.

Run as a script it reads JSON {"prompts": [...], "differ_percent": P} on stdin and prints
[{"prompt", "differs", "words"}] (the candidate's words), for checking by hand.
"""

import hashlib
import json
import sys

VOCABULARY = (
    "the a model token stream answer quick brown fox jumps over lazy dog river mountain cloud "
    "signal packet kernel buffer shadow mirror latency window socket vector tensor matrix weight "
    "layer gradient sample batch epoch error metric recall forest valley ocean harbor lantern "
    "meadow copper silver garden engine rocket planet orbit comet nebula galaxy photon quantum "
    "circuit compass anchor beacon canyon glacier prairie thunder"
).split()

MIN_WORDS = 8
MAX_WORDS = 24


def _digest(label, prompt):
    return hashlib.sha256(f"{label}:{prompt}".encode()).digest()


def share(label, prompt):
    """A number in [0, 10000) from the prompt: `share(...) < percent * 100` picks percent of prompts."""
    return int.from_bytes(_digest(label, prompt)[:8], "big") % 10000


def picked(label, prompt, percent):
    """Whether the prompt is among the `percent` (0-100) share picked for `label`."""
    return share(label, prompt) < round(percent * 100)


def differs(prompt, percent):
    """Whether a candidate with --differ-percent `percent` changes the answer to this prompt."""
    return picked("differ", prompt, percent)


def _stream(label, prompt):
    """An endless stream of 32-bit numbers from the prompt."""
    counter = 0
    while True:
        block = hashlib.sha256(f"{label}:{counter}:{prompt}".encode()).digest()
        for i in range(0, 32, 4):
            yield int.from_bytes(block[i : i + 4], "big")
        counter += 1


def words(prompt, choice=0, count=None):
    """The production model's full answer (before max_tokens) to `prompt` for choice `choice`:
    MIN_WORDS to MAX_WORDS words, or exactly `count` (the servers' --words, for load tests)."""
    numbers = _stream(f"words/{choice}", prompt)
    drawn = MIN_WORDS + next(numbers) % (MAX_WORDS - MIN_WORDS + 1)
    count = drawn if count is None else count
    return [VOCABULARY[next(numbers) % len(VOCABULARY)] for _ in range(count)]


def candidate_words(prompt, choice, differ_percent, count=None):
    """The candidate's answer: production's, with one word replaced for the prompts `differs` picks.

    The replacement is another vocabulary word, so the texts differ in exactly one token: their
    token-level F1 is (n - 1) / n for n words.
    """
    out = words(prompt, choice, count)
    if not differs(prompt, differ_percent):
        return out
    numbers = _stream(f"variant/{choice}", prompt)
    at = next(numbers) % len(out)
    replacement = VOCABULARY[(VOCABULARY.index(out[at]) + 1 + next(numbers) % (len(VOCABULARY) - 1)) % len(VOCABULARY)]
    out[at] = replacement
    return out


def text_of(token_list):
    """The text of a word list as the server streams it: words joined by single spaces."""
    return " ".join(token_list)


def prompt_of(kind, body):
    """What the model reads of a request (`kind` "chat" or "completions"): the chat messages as
    "role: content" lines, or the completion prompt. Raises ValueError for a malformed request."""
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list")
        parts = []
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(f"{m.get('role', '')}: {content or ''}")
        return "\n".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ValueError("prompt must be a string")
    return prompt


def main():
    query = json.load(sys.stdin)
    percent = float(query.get("differ_percent", 0))
    out = [
        {
            "prompt": p,
            "differs": differs(p, percent),
            "words": candidate_words(p, 0, percent),
        }
        for p in query["prompts"]
    ]
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()

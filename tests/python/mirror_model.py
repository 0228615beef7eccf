"""The test classifier, shared by the gRPC servers and clients.

It is the same model as `mirror_tests::model_server::Model` (tests/src/model_server.rs), operation
for operation, so that HTTP/1.1 and gRPC scenes answer alike and a test can compute the truth in
Rust: softmax of fixed linear scores over the features, probabilities rounded to 6 digits, 3
classes; a candidate flips the two most likely labels of the rows that `flips(row, percent)` picks
by an FNV-1a hash of the row's features as little-endian f32.

Also the deterministic features the clients send, and the row codecs (FP32, little-endian).

Run as a script, it reads JSON `{"rows": [[x, ...], ...], "disagree_percent": P}` on stdin, the
features given as f32 bit patterns, and prints the probabilities as f64 bit patterns, one JSON
list per row; the Rust tests compare these with `Model::predict`.
"""

import json
import math
import struct
import sys

CLASSES = 3

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1


def f32_bytes(x):
    """Little-endian bytes of `x` as f32 (as Rust's `x as f32`: out-of-range values become inf)."""
    try:
        return struct.pack("<f", x)
    except OverflowError:
        return struct.pack("<f", math.copysign(math.inf, x))


def row_hash(row):
    """FNV-1a over the little-endian f32 bytes of each feature."""
    h = _FNV_OFFSET
    for x in row:
        for byte in f32_bytes(x):
            h ^= byte
            h = (h * _FNV_PRIME) & _MASK64
    return h


def flips(row, percent):
    """Whether a model that disagrees on `percent` of rows flips this one."""
    return (row_hash(row) % 10_000) / 100.0 < percent


def _round_half_away(x):
    """Rust's f64::round: halves go away from zero (Python's round() goes to even)."""
    a = abs(x)
    r = math.floor(a)
    if a - r >= 0.5:
        r += 1.0
    return math.copysign(r, x)


def predict(row, disagree_percent=0.0):
    """Class probabilities of one row (a sequence of floats), as f64, rounded to 6 digits."""
    scores = [0.0] * CLASSES
    for c in range(CLASSES):
        score = 0.0
        for j, x in enumerate(row):
            w = float((c * 7 + j * 3) % 5) - 2.0
            score += 0.5 * w * x
        scores[c] = score
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = 0.0
    for e in exps:
        total += e
    p = [_round_half_away((e / total) * 1e6) / 1e6 for e in exps]
    if flips(row, disagree_percent):
        # Stable descending order, as Rust's sort_by with total_cmp (ties keep the lower index).
        order = sorted(range(CLASSES), key=lambda i: -p[i])
        p[order[0]], p[order[1]] = p[order[1]], p[order[0]]
    return p


def feature(request_index, row, column):
    """The deterministic feature the clients send: request `i`, row `r`, column `f`."""
    return (((request_index * 31 + row * 7 + column * 13) % 97) - 48) / 10.0


# Rows repeat with period 97 (7 is invertible mod 97), so a request of any size is built from
# one block of 97 rows.
ROW_PERIOD = 97


def request_features_raw(request_index, rows, features):
    """The little-endian f32 bytes of request `request_index`'s [rows, features] tensor."""
    block_rows = min(rows, ROW_PERIOD)
    block = b"".join(
        f32_bytes(feature(request_index, r, f)) for r in range(block_rows) for f in range(features)
    )
    full, rest = divmod(rows, block_rows) if block_rows else (0, 0)
    return block * full + block[: rest * features * 4]


def decode_f32(raw):
    """Floats of little-endian f32 bytes (length must be a multiple of 4)."""
    if len(raw) % 4:
        raise ValueError(f"{len(raw)} bytes are not a whole number of FP32 values")
    return struct.unpack(f"<{len(raw) // 4}f", raw)


class Model:
    """A named classifier that answers [rows, features] FP32 tensors with [rows, 3] FP32 ones.

    Predictions are cached per distinct row, so a 64 MiB request of repeating rows is answered in
    seconds in pure Python.
    """

    def __init__(self, disagree_percent=0.0):
        self.disagree_percent = disagree_percent
        self._cache = {}

    def predict_raw(self, raw, features):
        """Little-endian FP32 probabilities of a little-endian FP32 [rows, features] tensor."""
        width = features * 4
        if features <= 0 or len(raw) % width:
            raise ValueError(f"{len(raw)} bytes of FP32 do not make rows of {features} features")
        out = []
        cache = self._cache
        for start in range(0, len(raw), width):
            row_bytes = raw[start : start + width]
            answer = cache.get(row_bytes)
            if answer is None:
                row = struct.unpack(f"<{features}f", row_bytes)
                answer = b"".join(f32_bytes(p) for p in predict(row, self.disagree_percent))
                if len(cache) < 1_000_000:
                    cache[row_bytes] = answer
            out.append(answer)
        return b"".join(out)


def _f64_bits(x):
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def _main():
    query = json.load(sys.stdin)
    percent = float(query.get("disagree_percent", 0.0))
    rows = [[struct.unpack("<f", struct.pack("<I", bits))[0] for bits in row] for row in query["rows"]]
    json.dump([[_f64_bits(p) for p in predict(row, percent)] for row in rows], sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    _main()

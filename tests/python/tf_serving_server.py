"""A gRPC model server speaking TensorFlow Serving's `tensorflow.serving.PredictionService/Predict`
with the test classifier of mirror_model.py.

Predict takes a DT_FLOAT "features" input [rows, features] in `tensor_content` (little-endian) or
`float_val`, and answers a DT_FLOAT "probabilities" output [rows, 3] in `tensor_content` (or
`float_val` with --float-val). An input named "key" (any type) is passed through as the output
"key", as TF Serving models commonly pass an example key through; clients send their request id
there, so every answer is unique to its request. The answer's `model_spec` names the model, its
version and the signature ("serving_default" unless the request names one).

Usage: tf_serving_server.py --listen ADDR [--listen ADDR ...] [--model-name demo]
  [--model-version 1] [--disagree-percent P] [--delay-ms MS] [--error-every N [--error-code NAME]]
  [--compression gzip|deflate|none] [--max-message-mb MB] [--max-concurrent-streams N] [--float-val]
--error-every reads the request number from the end of the first string of the "key" input.
Prints "listening on ADDR" per address once serving (port 0 is replaced by the bound port).
"""

import argparse
import asyncio
from array import array

import grpc_common
from grpc_common import grpc

import mirror_model
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

INPUT = "features"
OUTPUT = "probabilities"
KEY = "key"
DEFAULT_SIGNATURE = "serving_default"


def float_tensor(raw, rows, columns, as_float_val):
    """A DT_FLOAT TensorProto [rows, columns] of little-endian FP32 bytes."""
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[
            tensor_shape_pb2.TensorShapeProto.Dim(size=rows),
            tensor_shape_pb2.TensorShapeProto.Dim(size=columns),
        ]
    )
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape)
    if as_float_val:
        tensor.float_val.extend(array("f", raw))
    else:
        tensor.tensor_content = raw
    return tensor


def request_key(request):
    """The first string of the "key" input, or ""."""
    key = request.inputs.get(KEY)
    if key is None or not key.string_val:
        return ""
    return key.string_val[0].decode("utf-8", "replace")


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, args):
        self.args = args
        self.model = mirror_model.Model(args.disagree_percent)
        self.error_code = grpc_common.status_code(args.error_code)
        try:
            self.version = int(args.model_version)
        except ValueError:
            raise SystemExit(
                f"--model-version {args.model_version!r}: TF Serving versions are numbers"
            ) from None

    async def Predict(self, request, context):
        if self.args.delay_ms > 0:
            await asyncio.sleep(self.args.delay_ms / 1000.0)
        key = request_key(request)
        if grpc_common.errs(key, self.args.error_every):
            await context.abort(self.error_code, grpc_common.error_message(key, self.args.error_every))
        spec = request.model_spec
        if spec.name != self.args.model_name or (
            spec.HasField("version") and spec.version.value != self.version
        ):
            version = spec.version.value if spec.HasField("version") else "Latest"
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {spec.name!r} version {version}"
            )
        try:
            raw, rows, features = self._features(request)
            probabilities = self.model.predict_raw(raw, features) if rows else b""
        except ValueError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.args.model_name
        response.model_spec.version.value = self.version
        response.model_spec.signature_name = spec.signature_name or DEFAULT_SIGNATURE
        outputs = {OUTPUT: float_tensor(probabilities, rows, mirror_model.CLASSES, self.args.float_val)}
        if KEY in request.inputs:
            outputs[KEY] = request.inputs[KEY]
        wanted = list(request.output_filter) or list(outputs)
        unknown = [name for name in wanted if name not in outputs]
        if unknown:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"output_filter names unknown outputs {unknown}"
            )
        for name in wanted:
            response.outputs[name].CopyFrom(outputs[name])
        return response

    @staticmethod
    def _features(request):
        """(little-endian FP32 bytes, rows, features) of the request's "features" input."""
        if INPUT not in request.inputs:
            raise ValueError(f"no input named {INPUT!r} (inputs: {sorted(request.inputs)})")
        tensor = request.inputs[INPUT]
        if tensor.dtype != types_pb2.DT_FLOAT:
            raise ValueError(f"input {INPUT!r} is {types_pb2.DataType.Name(tensor.dtype)}, not DT_FLOAT")
        dims = [d.size for d in tensor.tensor_shape.dim]
        if len(dims) != 2 or min(dims) < 0:
            raise ValueError(f"input {INPUT!r} has shape {dims}, not [rows, features]")
        rows, features = dims
        if rows and not features:
            raise ValueError(f"input {INPUT!r} has rows of no features")
        raw = tensor.tensor_content if tensor.tensor_content else array("f", tensor.float_val).tobytes()
        if len(raw) != rows * features * 4:
            raise ValueError(
                f"input {INPUT!r} holds {len(raw)} bytes, shape {rows}x{features} needs {rows * features * 4}"
            )
        return raw, rows, features


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    grpc_common.add_server_arguments(parser)
    parser.add_argument("--float-val", action="store_true", help="answer in float_val, not tensor_content")
    args = parser.parse_args()

    async def run():
        server = grpc_common.new_server(args)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(args), server)
        await grpc_common.serve(server, args.listen)

    asyncio.run(run())


if __name__ == "__main__":
    main()

"""A gRPC model server speaking the Open Inference Protocol (`inference.GRPCInferenceService`, as
KServe, Triton and MLServer do) with the test classifier of mirror_model.py, and the streaming
`mirror.test.Echo` service on the same ports.

ModelInfer takes FP32 "features" [rows, features] in `contents.fp32_contents` or in
`raw_input_contents` (little-endian) and answers FP32 "probabilities" [rows, 3] in
`raw_output_contents` (or typed `contents` with --typed-output), echoing the request's id.

Usage: oip_server.py --listen ADDR [--listen ADDR ...] [--model-name demo] [--model-version 1]
  [--disagree-percent P] [--delay-ms MS] [--error-every N [--error-code NAME]]
  [--compression gzip|deflate|none] [--max-message-mb MB] [--max-concurrent-streams N]
  [--typed-output]
Prints "listening on ADDR" per address once serving (port 0 is replaced by the bound port).
"""

import argparse
import asyncio
from array import array

import grpc_common
from grpc_common import grpc

import grpc_predict_v2_pb2 as oip
import grpc_predict_v2_pb2_grpc as oip_grpc
import mirror_model
import stream_test_pb2 as echo
import stream_test_pb2_grpc as echo_grpc

FP32 = "FP32"
INPUT = "features"
OUTPUT = "probabilities"


class InferenceService(oip_grpc.GRPCInferenceServiceServicer):
    def __init__(self, args):
        self.args = args
        self.model = mirror_model.Model(args.disagree_percent)
        self.error_code = grpc_common.status_code(args.error_code)

    def _serves(self, name, version):
        return name == self.args.model_name and version in ("", self.args.model_version)

    async def ServerLive(self, request, context):
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return oip.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):
        return oip.ModelReadyResponse(ready=self._serves(request.name, request.version))

    async def ServerMetadata(self, request, context):
        return oip.ServerMetadataResponse(name="mirror-test-oip", version="1", extensions=[])

    async def ModelMetadata(self, request, context):
        if not self._serves(request.name, request.version):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.name!r}")
        tensor = oip.ModelMetadataResponse.TensorMetadata
        return oip.ModelMetadataResponse(
            name=self.args.model_name,
            versions=[self.args.model_version],
            platform="mirror-test",
            inputs=[tensor(name=INPUT, datatype=FP32, shape=[-1, -1])],
            outputs=[tensor(name=OUTPUT, datatype=FP32, shape=[-1, mirror_model.CLASSES])],
        )

    async def ModelInfer(self, request, context):
        if self.args.delay_ms > 0:
            await asyncio.sleep(self.args.delay_ms / 1000.0)
        if grpc_common.errs(request.id, self.args.error_every):
            await context.abort(self.error_code, grpc_common.error_message(request.id, self.args.error_every))
        if not self._serves(request.model_name, request.model_version):
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"unknown model {request.model_name!r} version {request.model_version!r}",
            )
        try:
            raw, rows, features = self._features(request)
            probabilities = self.model.predict_raw(raw, features) if rows else b""
        except ValueError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        wanted = [o.name for o in request.outputs]
        if wanted and wanted != [OUTPUT]:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown outputs {wanted} (only {OUTPUT})")
        response = oip.ModelInferResponse(
            model_name=self.args.model_name, model_version=self.args.model_version, id=request.id
        )
        output = response.outputs.add(name=OUTPUT, datatype=FP32, shape=[rows, mirror_model.CLASSES])
        if self.args.typed_output:
            output.contents.fp32_contents.extend(array("f", probabilities))
        else:
            response.raw_output_contents.append(probabilities)
        return response

    @staticmethod
    def _features(request):
        """(little-endian FP32 bytes, rows, features) of the request's "features" input."""
        names = [t.name for t in request.inputs]
        if INPUT not in names:
            raise ValueError(f"no input named {INPUT!r} (inputs: {names})")
        index = names.index(INPUT)
        tensor = request.inputs[index]
        if tensor.datatype != FP32:
            raise ValueError(f"input {INPUT!r} is {tensor.datatype}, not {FP32}")
        if len(tensor.shape) != 2 or min(tensor.shape) < 0:
            raise ValueError(f"input {INPUT!r} has shape {list(tensor.shape)}, not [rows, features]")
        rows, features = tensor.shape
        if rows and not features:
            raise ValueError(f"input {INPUT!r} has rows of no features")
        if request.raw_input_contents:
            if len(request.raw_input_contents) != len(request.inputs):
                raise ValueError("raw_input_contents must hold one entry per input")
            raw = request.raw_input_contents[index]
        else:
            raw = array("f", tensor.contents.fp32_contents).tobytes()
        if len(raw) != rows * features * 4:
            raise ValueError(
                f"input {INPUT!r} holds {len(raw)} bytes, shape {rows}x{features} needs {rows * features * 4}"
            )
        return raw, rows, features


def answer(message):
    """The Echo answer to `message`: "re:" + its id, its seq, its payload reversed."""
    return echo.Msg(id="re:" + message.id, seq=message.seq, payload=message.payload[::-1])


class EchoService(echo_grpc.EchoServicer):
    def __init__(self, args):
        self.delay = args.delay_ms / 1000.0

    async def Chat(self, request_iterator, context):
        async for message in request_iterator:
            if message.fail:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"message {message.id} asked to fail")
            if self.delay:
                await asyncio.sleep(self.delay)
            yield answer(message)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    grpc_common.add_server_arguments(parser)
    parser.add_argument(
        "--typed-output", action="store_true", help="answer in typed contents, not raw_output_contents"
    )
    args = parser.parse_args()

    async def run():
        server = grpc_common.new_server(args)
        oip_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(args), server)
        echo_grpc.add_EchoServicer_to_server(EchoService(args), server)
        await grpc_common.serve(server, args.listen)

    asyncio.run(run())


if __name__ == "__main__":
    main()

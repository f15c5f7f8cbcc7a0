"""A stand-in quantd in this process (grpcio + the package's stubs) that records what clients
send: the request messages, their metadata, and whether TLS carried them. It answers
GetCapabilities with a 64 MiB message limit and refuses every other call with UNIMPLEMENTED
("recorded <method>"; the streams other than QuantizeStream without recording), which is all the request-capturing tests need."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc

from quantd.v1 import quantd_pb2 as pb
from quantd.v1 import quantd_pb2_grpc as pb_grpc


class Recorder(pb_grpc.QuantizerServicer):
    def __init__(self):
        self.lock = threading.Lock()
        self.calls = []  # (method, request, metadata dict)

    def _record(self, method, request, context):
        with self.lock:
            self.calls.append((method, request, dict(context.invocation_metadata())))

    def take(self, method):
        """The requests of `method` recorded so far, removed from the record."""
        with self.lock:
            found = [c for c in self.calls if c[0] == method]
            self.calls = [c for c in self.calls if c[0] != method]
        return found

    def GetCapabilities(self, request, context):
        self._record("GetCapabilities", request, context)
        return pb.GetCapabilitiesResponse(
            version="fake", active_backend="cpu",
            limits=pb.Limits(max_message_bytes=64 << 20, stream_chunk_bytes=4 << 20))

    def _refuse(self, method):
        def handler(request, context):
            self._record(method, request, context)
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"recorded {method}")
        return handler

    def QuantizeStream(self, request_iterator, context):
        self._record("QuantizeStream", None, context)
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "recorded QuantizeStream")

    def __getattribute__(self, name):
        if name in ("Quantize", "Dequantize", "QuantDequant", "Calibrate", "Gemm"):
            return object.__getattribute__(self, "_refuse")(name)
        return object.__getattribute__(self, name)


class FakeServer:
    def __init__(self, server_credentials=None):
        self.recorder = Recorder()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                                  options=[("grpc.max_receive_message_length", -1)])
        pb_grpc.add_QuantizerServicer_to_server(self.recorder, self.server)
        if server_credentials is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self.server.add_secure_port("127.0.0.1:0", server_credentials)
        self.server.start()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def stop(self):
        self.server.stop(grace=None)

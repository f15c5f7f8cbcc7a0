"""quantd: the Python client of the quantd quantization service.

    import quantd
    c = quantd.Client("localhost:50051")
    q = c.quantize(x, format="int8", granularity="token")   # numpy array or torch tensor
    q.codes, q.scales, q.zero_points, q.metrics["sqnr_db"]
    x_hat = q.dequantize()
    c.quant_dequant(x, format="nvfp4"); c.calibrate(w, format="int8", method="mse")
    c.gemm(a, w, format="fp8-e4m3", bias=b); c.capabilities()
    w8 = c.register_weight(w, "fp8-e4m3"); c.gemm(a, w8, format="fp8-e4m3")   # kept on the GPU

quantd.compat has drop-in FP8Quantizer / INT8Quantizer classes backed by the service.
Errors are quantd.QuantdError subclasses (quantd.InvalidArgument, quantd.ResourceExhausted,
quantd.Unavailable, ...) carrying the server's message.
"""

from .client import (DEFAULT_TARGET, Calibration, Capabilities, Client, FormatInfo,
                     QuantizedTensor, Weight)
from .errors import (Aborted, AlreadyExists, Cancelled, DataLoss, DeadlineExceeded,
                     FailedPrecondition, Internal, InvalidArgument, NotFound, OutOfRange,
                     PermissionDenied, QuantdError, ResourceExhausted, Unauthenticated,
                     Unavailable, Unimplemented, Unknown)
from .v1 import quantd_pb2 as pb

__version__ = "0.1.0"

__all__ = [
    "Client", "QuantizedTensor", "Weight", "Calibration", "Capabilities", "FormatInfo", "DEFAULT_TARGET",
    "pb", "QuantdError", "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded",
    "NotFound", "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
    "Aborted", "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss",
    "Unauthenticated", "__version__",
]

"""Why both benchmark sides warm up before timing (tests/bench/cuda_check.h kWarmUpMs):
torch._scaled_mm at 8192 x 28672 x 8192 on the same E4M3 codes as gemm_peers.py, timed by
median_ms with its warm-up and then without, on all-zero codes, on random normal codes. A
power-bound kernel runs faster on zero codes (fewer bits toggling) and slower once the GPU
has been busy for a while.

    python3 tests/bench/scaled_mm_power.py     # on the GPU node, from the repository root
"""
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import peers  # noqa: E402
from gemm_peers import fp8_tensor, hashed_input  # noqa: E402

M, N, K = 8192, 28672, 8192


def main():
    w8, ws = fp8_tensor(hashed_input(N, K, 2, 0.05))
    x8, xs = fp8_tensor(hashed_input(M, K, 1, 1.0))
    zeros_x, zeros_w = torch.zeros_like(x8), torch.zeros_like(w8)
    normal_x = torch.randn(M, K, device="cuda").to(torch.float8_e4m3fn)
    normal_w = torch.randn(N, K, device="cuda").to(torch.float8_e4m3fn)

    def product(a, b):
        return lambda: torch._scaled_mm(a, b.t(), scale_a=xs, scale_b=ws,
                                        out_dtype=torch.bfloat16)

    print(f"torch._scaled_mm {M} x {N} x {K}, {torch.cuda.get_device_name()}")
    for label, fn, timing in [
            ("hashed codes, 1 warm-up call, median of 10", product(x8, w8),
             lambda f: peers.median_ms(f, 10, warm_up_seconds=0)),
            ("hashed codes, 1 warm-up call, median of 30", product(x8, w8),
             lambda f: peers.median_ms(f, 30, warm_up_seconds=0)),
            ("hashed codes, peers.median_ms (warm), 10", product(x8, w8),
             lambda f: peers.median_ms(f, 10)),
            ("all-zero codes, peers.median_ms, 10", product(zeros_x, zeros_w),
             lambda f: peers.median_ms(f, 10)),
            ("normal codes, peers.median_ms, 10", product(normal_x, normal_w),
             lambda f: peers.median_ms(f, 10))]:
        ms = timing(fn)
        print(f"{label:45s} {ms:8.4f} ms {2 * M * N * K / ms / 1e9:8.1f} TFLOP/s")


if __name__ == "__main__":
    main()

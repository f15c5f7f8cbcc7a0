"""PyTorch peers of quantd's kernel benchmark: the same ops, eager and torch.compile.

Each op is the PyTorch sequence a user would write for what quantd_cuda_bench times (same
shapes, [rows, 4096] float32 from a normal distribution, the same minimum-byte count for
GB/s), timed with CUDA events as the median of repeats after a warm-up.

    python3 tests/bench/peers.py [--max-elements=N] [--csv=FILE]

Run it in the same job as `quantd_cuda_bench` so both tables come from one machine state
(docs/PERFORMANCE.md). Speed is never a test assertion.
"""
import argparse
import csv
import statistics
import time

import torch


def int8_token(x):
    s = x.abs().amax(dim=-1, keepdim=True) / 127.0
    s = torch.where(s == 0, torch.ones_like(s), s)
    return torch.clamp(torch.round(x / s), -128, 127).to(torch.int8), s


def int8_tensor_static(x, s):
    return torch.clamp(torch.round(x / s), -128, 127).to(torch.int8)


def int8_tensor_dynamic(x):
    s = x.abs().amax() / 127.0
    return torch.clamp(torch.round(x / s), -128, 127).to(torch.int8), s


def int4_group128(x):
    g = x.view(x.shape[0], -1, 128)
    s = g.abs().amax(dim=-1, keepdim=True) / 7.0
    s = torch.where(s == 0, torch.ones_like(s), s)
    q = torch.clamp(torch.round(g / s), -8, 7).to(torch.int8).view(x.shape[0], -1)
    packed = (q[:, 0::2] & 0xF) | ((q[:, 1::2] & 0xF) << 4)  # element 0 in the low nibble
    return packed.to(torch.uint8), s


def fp8_token(x):
    s = x.abs().amax(dim=-1, keepdim=True) / 448.0
    s = torch.where(s == 0, torch.ones_like(s), s)
    return torch.clamp(x / s, -448.0, 448.0).to(torch.float8_e4m3fn), s


def fp8_tensor_dynamic(x):
    s = x.abs().amax() / 448.0
    return torch.clamp(x / s, -448.0, 448.0).to(torch.float8_e4m3fn), s


def dequantize_int8_token(q, s):
    return q.to(torch.float32) * s


def _mx_exponent(g, emax):
    """OCP MX FLOOR: X = floor(log2(amax)) - emax, clamped to [-127, 127] (log2(0) = -inf)."""
    amax = g.abs().amax(dim=-1, keepdim=True)
    return (torch.floor(torch.log2(amax)) - emax).clamp(-127, 127)


def mxfp8_e4m3(x):
    g = x.view(x.shape[0], -1, 32)
    e = _mx_exponent(g, 8)
    q = torch.clamp(g / torch.exp2(e), -448.0, 448.0).to(torch.float8_e4m3fn).view(x.shape)
    return q, (e + 127).to(torch.uint8)


def mxfp4(x):
    # PyTorch has no float32 -> E2M1 cast: RNE onto 0, .5, 1, 1.5, 2, 3, 4, 6 by counting the
    # midpoints passed (ties to the even code), saturating at 6; element 0 in the low nibble.
    g = x.view(x.shape[0], -1, 32)
    e = _mx_exponent(g, 2)
    code = _e2m1_codes(g / torch.exp2(e)).view(x.shape[0], -1)
    return code[:, 0::2] | (code[:, 1::2] << 4), (e + 127).to(torch.uint8)


def mxint8(x):
    # Elements are int8 fixed point 1.6: clamp(rne(x / 2^(X - 6)), -127, 127), emax 0.
    g = x.view(x.shape[0], -1, 32)
    e = _mx_exponent(g, 0)
    q = torch.clamp(torch.round(g / torch.exp2(e - 6)), -127, 127).to(torch.int8).view(x.shape)
    return q, (e + 127).to(torch.uint8)


def _fp6_codes(v, exp_bits, man_bits, bias, max_value):
    # PyTorch has no FP6: RNE onto the format's magnitudes by counting the midpoints passed
    # (ties to the even code), saturating; sign in bit 5.
    magnitudes = []
    for code in range(32):
        e, m = code >> man_bits, code & ((1 << man_bits) - 1)
        value = (m / (1 << man_bits)) * 2.0 ** (1 - bias) if e == 0 else \
            (1 + m / (1 << man_bits)) * 2.0 ** (e - bias)
        magnitudes.append(value)
    a = v.abs().clamp(max=max_value)
    code = torch.zeros_like(a, dtype=torch.uint8)
    for k in range(31):
        mid = (magnitudes[k] + magnitudes[k + 1]) / 2
        code += (a >= mid if k % 2 == 1 else a > mid).to(torch.uint8)  # ties to the even code
    return code | (torch.signbit(v).to(torch.uint8) << 5)


def _pack_fp6(code, rows):
    # Four codes in three bytes, a little-endian bit stream.
    c = code.view(rows, -1, 4).to(torch.int32)
    word = c[..., 0] | (c[..., 1] << 6) | (c[..., 2] << 12) | (c[..., 3] << 18)
    return torch.stack([word & 0xFF, (word >> 8) & 0xFF, (word >> 16) & 0xFF],
                       dim=-1).to(torch.uint8).view(rows, -1)


def mxfp6_e3m2(x):
    g = x.view(x.shape[0], -1, 32)
    e = _mx_exponent(g, 4)
    code = _fp6_codes(g / torch.exp2(e), 3, 2, 3, 28.0)
    return _pack_fp6(code, x.shape[0]), (e + 127).to(torch.uint8)


def _e2m1_codes(v):
    a = v.abs()
    code = ((a > 0.25).to(torch.uint8) + (a >= 0.75) + (a > 1.25) + (a >= 1.75) + (a > 2.5) +
            (a >= 3.5) + (a > 5.0))
    return code | (torch.signbit(v).to(torch.uint8) << 3)


def nvfp4(x):
    # TransformerEngine's NVFP4 recipe written in PyTorch: S_enc = 2688 / amax (1 for 0, clamped
    # to FLT_MAX), E4M3 block scales per 16, d_b = s_b / S_enc, E2M1 by the midpoints passed
    # (codes 0 where d_b is 0), element 0 in the low nibble.
    amax = x.abs().amax()
    s_enc = torch.where(amax == 0, torch.ones_like(amax),
                        torch.clamp(2688.0 / amax, max=torch.finfo(torch.float32).max))
    return nvfp4_static_global(x, s_enc)


def nvfp4_static_global(x, s_enc):
    # The same with S_enc given (an amax history): no tensor amax pass.
    g = x.view(x.shape[0], -1, 16)
    block_amax = g.abs().amax(dim=-1, keepdim=True)
    s_b = torch.clamp(block_amax * (s_enc / 6.0), max=448.0).to(torch.float8_e4m3fn)
    d_b = s_b.to(torch.float32) / s_enc
    v = torch.where(d_b == 0, torch.zeros_like(g), g / d_b)
    code = torch.where(d_b == 0, torch.zeros_like(v, dtype=torch.uint8), _e2m1_codes(v))
    code = code.view(x.shape[0], -1)
    return code[:, 0::2] | (code[:, 1::2] << 4), s_b.view(torch.uint8), s_enc


# Warm-up before timing, as tests/bench/cuda_check.h's kWarmUpMs (why: there): the sustained
# power state, the same for both sides.
WARM_UP_SECONDS = 0.3


def median_ms(fn, reps, warm_up_seconds=WARM_UP_SECONDS):
    fn()
    torch.cuda.synchronize()
    warm_until = time.perf_counter() + warm_up_seconds
    while time.perf_counter() < warm_until:
        fn()
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-elements", type=int, default=1 << 30)
    parser.add_argument("--min-elements", type=int, default=1 << 22)
    parser.add_argument("--csv", default="")
    parser.add_argument("--only", default="", help="ops whose name contains this")
    args = parser.parse_args()

    device = torch.device("cuda")
    copy_n = min(args.max_elements, 1 << 30)
    src = torch.empty(copy_n, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src), 20)
    copy_gbs = 2 * src.numel() * 4 / (copy_ms * 1e-3) / 1e9
    del src, dst
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}; "
          f"device copy {copy_gbs:.1f} GB/s (read + write)")

    rows_out = []
    print(f"{'op':34s} {'elements':>12s} {'eager':>10s} {'compile':>10s} {'GB/s eager':>11s} "
          f"{'GB/s compile':>13s}")
    n = args.min_elements
    while n <= args.max_elements:
        rows = n // 4096
        x = torch.randn(rows, 4096, device=device, dtype=torch.float32)
        s_static = (x.abs().amax() / 127.0).reshape(1)
        s_enc = 2688.0 / x.abs().amax()
        q8, s8 = int8_token(x)
        numel = rows * 4096
        ops = [
            ("quantize int8 token", lambda f: f(x), int8_token, numel * 5 + rows * 4),
            ("quantize int8 tensor static", lambda f: f(x, s_static), int8_tensor_static,
             numel * 5 + 4),
            ("quantize int8 tensor dynamic", lambda f: f(x), int8_tensor_dynamic, numel * 5 + 4),
            ("quantize int4 group128", lambda f: f(x), int4_group128,
             numel * 4 + numel // 2 + numel // 128 * 4),
            ("quantize fp8e4m3 token", lambda f: f(x), fp8_token, numel * 5 + rows * 4),
            ("quantize fp8e4m3 tensor dynamic", lambda f: f(x), fp8_tensor_dynamic,
             numel * 5 + 4),
            ("dequantize int8 token", lambda f: f(q8, s8), dequantize_int8_token,
             numel * 5 + rows * 4),
            # MX, FLOOR: the minimum bytes as quantd_cuda_bench counts them (fp32 scales).
            ("quantize mxfp8 (e4m3)", lambda f: f(x), mxfp8_e4m3, numel * 5 + numel // 32 * 4),
            ("quantize mxfp4", lambda f: f(x), mxfp4, numel * 4 + numel // 2 + numel // 32 * 4),
            ("quantize mxint8", lambda f: f(x), mxint8, numel * 5 + numel // 32 * 4),
            ("quantize mxfp6 (e3m2)", lambda f: f(x), mxfp6_e3m2,
             numel * 4 + numel * 3 // 4 + numel // 32 * 4),
            ("quantize nvfp4", lambda f: f(x), nvfp4, numel * 4 + numel // 2 + numel // 16 * 4),
            ("quantize nvfp4 static global", lambda f: f(x, s_enc), nvfp4_static_global,
             numel * 4 + numel // 2 + numel // 16 * 4),
        ]
        ops = [op for op in ops if args.only in op[0]]
        reps = 5 if numel >= (1 << 28) else 20
        for name, call, fn, nbytes in ops:
            eager = median_ms(lambda: call(fn), reps)
            compiled_fn = torch.compile(fn, dynamic=False)
            compiled = median_ms(lambda: call(compiled_fn), reps)
            e_gbs, c_gbs = nbytes / (eager * 1e-3) / 1e9, nbytes / (compiled * 1e-3) / 1e9
            print(f"{name:34s} {numel:12d} {eager:8.4f}ms {compiled:8.4f}ms {e_gbs:11.1f} "
                  f"{c_gbs:13.1f}")
            rows_out.append([name, numel, eager, compiled, e_gbs, c_gbs, copy_gbs])
        del x, q8, s8
        torch.cuda.empty_cache()
        n *= 16
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["op", "elements", "eager_ms", "compile_ms", "eager_gb_per_s",
                             "compile_gb_per_s", "copy_gb_per_s"])
            writer.writerows(rows_out)


if __name__ == "__main__":
    main()

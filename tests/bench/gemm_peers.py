"""PyTorch peers of quantd_gemm_bench: the same products on the same values, timed the same way.

HashedInput below reproduces quantd_gemm_bench's generator bit for bit (the same uint32 hash,
the same fp32 steps, RN to BF16), so both sides multiply identical activations and weights.
Ops (BF16 out unless said):
    scaled_mm tensor / rowwise   torch._scaled_mm on E4M3 operands quantized beforehand
    int_mm int32                 torch._int_mm (PyTorch needs M > 16: smaller M is n/a)
    bf16 linear                  F.linear in BF16 (cuBLAS): the bar for decode shapes
    w8a8 fp8 / int8 linear       the eager PyTorch sequence: per-token quantization of the
                                 BF16 activations, the product, the scales (int8: by hand)

    python3 tests/bench/gemm_peers.py [--m=1,16,128,2048,8192] [--csv=FILE]
    python3 tests/bench/gemm_peers.py --compare=OURS.csv,PEERS.csv   # the ratio table

Run it in the same job as quantd_gemm_bench (docs/PERFORMANCE.md). Speed is never a test
assertion.
"""
import argparse
import csv

import torch
import torch.nn.functional as F

from peers import median_ms  # tests/bench/peers.py: the same timing for every peer

SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (8192, 8192), (28672, 8192),
          (8192, 28672)]
E4M3_MAX = 448.0


def hashed_uniform(i, seed):
    mask = 0xFFFFFFFF
    v = (i * 2654435761 + seed * 40503) & mask
    v = v ^ (v >> 16)
    v = (v * 0x85EBCA6B) & mask  # int64 products wrap; the low 32 bits stay exact
    v = v ^ (v >> 13)
    v = (v * 0xC2B2AE35) & mask
    v = v ^ (v >> 16)
    return v.to(torch.float32) * (2.0 ** -32)


def hashed_input(rows, cols, seed, scale):
    i = torch.arange(rows * cols, device="cuda", dtype=torch.int64)
    s = hashed_uniform(i, seed) + hashed_uniform(i, seed + 7)
    return (((s - 1.0) * 2.0) * scale).to(torch.bfloat16).view(rows, cols)


def fp8_rows(x):
    s = x.float().abs().amax(dim=-1, keepdim=True) / E4M3_MAX
    s = torch.where(s == 0, torch.ones_like(s), s)
    return (x.float() / s).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), s


def fp8_tensor(x):
    s = x.float().abs().amax() / E4M3_MAX
    return (x.float() / s).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), s


def int8_rows(x):
    s = x.float().abs().amax(dim=-1, keepdim=True) / 127.0
    s = torch.where(s == 0, torch.ones_like(s), s)
    return torch.round(x.float() / s).clamp(-128, 127).to(torch.int8), s


# (quantd op, PyTorch op): the ratio table's columns.
PAIRS = [("fp8 tensor gemm", "scaled_mm tensor"), ("fp8 rowwise gemm", "scaled_mm rowwise"),
         ("int8 int32 gemm", "int_mm int32"), ("w8a8 fp8 linear", "w8a8 fp8 linear"),
         ("w8a8 int8 linear", "w8a8 int8 linear"), ("fp8 rowwise gemm", "bf16 linear"),
         ("w8a8 fp8 linear", "bf16 linear")]


def compare(ours_path, peers_path):
    def load(path):
        with open(path) as f:
            return {(r["op"], int(r["m"]), int(r["n"]), int(r["k"])): float(r["ms"])
                    for r in csv.DictReader(f)}
    ours, peers = load(ours_path), load(peers_path)
    shapes = sorted({key[1:] for key in ours}, key=lambda s: (s[1], s[2], s[0]))
    print("| M | N | K | " + " | ".join(f"{a} vs {b}" for a, b in PAIRS) + " |")
    print("|" + "---|" * (3 + len(PAIRS)))
    for m, n, k in shapes:
        cells = []
        for a, b in PAIRS:
            t_ours, t_peer = ours.get((a, m, n, k)), peers.get((b, m, n, k))
            cells.append(f"{t_peer / t_ours:.2f}x" if t_ours and t_peer else "n/a")
        print(f"| {m} | {n} | {k} | " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--m", default="1,16,128,2048,8192")
    parser.add_argument("--csv")
    parser.add_argument("--compare", help="OURS.csv,PEERS.csv: print speed-ups, run nothing")
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare.split(","))
        return
    ms_list = [int(v) for v in args.m.split(",")]
    rows_out = []
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"{'op':22s} {'M':>6s} {'N':>6s} {'K':>6s} {'time':>10s} {'TFLOP/s':>9s}")
    for n, k in SHAPES:
        w = hashed_input(n, k, 2, 0.05)
        w8r, ws_r = fp8_rows(w)
        ws_r = ws_r.t().contiguous()  # [1, N], as _scaled_mm's row-wise scale_b
        w8t, ws_t = fp8_tensor(w)
        wi8, ws_i = int8_rows(w)
        for m in ms_list:
            x = hashed_input(m, k, 1, 1.0)
            x8r, xs_r = fp8_rows(x)
            x8t, xs_t = fp8_tensor(x)
            xi8, _ = int8_rows(x)

            def w8a8_fp8():
                q, s = fp8_rows(x)
                return torch._scaled_mm(q, w8r.t(), scale_a=s, scale_b=ws_r,
                                        out_dtype=torch.bfloat16)

            def w8a8_int8():
                q, s = int8_rows(x)
                return (torch._int_mm(q, wi8.t()).float() * s * ws_i.t()).to(torch.bfloat16)

            ops = [
                ("scaled_mm tensor", lambda: torch._scaled_mm(
                    x8t, w8t.t(), scale_a=xs_t, scale_b=ws_t, out_dtype=torch.bfloat16), True),
                ("scaled_mm rowwise", lambda: torch._scaled_mm(
                    x8r, w8r.t(), scale_a=xs_r, scale_b=ws_r, out_dtype=torch.bfloat16),
                 True),
                ("int_mm int32", lambda: torch._int_mm(xi8, wi8.t()), m > 16),
                ("bf16 linear", lambda: F.linear(x, w), True),
                ("w8a8 fp8 linear", w8a8_fp8, True),
                ("w8a8 int8 linear", w8a8_int8, m > 16),
            ]
            reps = 10 if m * n * k >= 2 ** 38 else 30
            for name, fn, possible in ops:
                if not possible:
                    print(f"{name:22s} {m:6d} {n:6d} {k:6d} {'n/a':>10s}")
                    continue
                try:
                    t = median_ms(fn, reps)
                except RuntimeError as error:  # a shape this PyTorch refuses
                    print(f"{name:22s} {m:6d} {n:6d} {k:6d} {'n/a':>10s}  ({str(error)[:60]})")
                    continue
                tflops = 2.0 * m * n * k / (t * 1e-3) / 1e12
                print(f"{name:22s} {m:6d} {n:6d} {k:6d} {t:7.4f} ms {tflops:9.1f}")
                rows_out.append((name, m, n, k, t, tflops))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["op", "m", "n", "k", "ms", "tflops"])
            writer.writerows(rows_out)


if __name__ == "__main__":
    main()

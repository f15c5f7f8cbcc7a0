"""A 2.2 GB float32 tensor (> 2 GiB) quantized and dequantized through a real quantd with
quantctl, which must stream it (QuantizeStream / DequantizeStream). Skipped with
QUANTD_SKIP_LARGE=1.

Memory: quantctl and quantd each hold about 2.8 GB at their peak, this process reads the
files through memory maps in blocks of rows. Disk: about 5 GB in a temporary directory that
is removed afterwards.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

import e2e_util
import oracle
from e2e_util import metric_samples, run_quantctl

pytestmark = pytest.mark.skipif(os.environ.get("QUANTD_SKIP_LARGE") == "1",
                                reason="QUANTD_SKIP_LARGE=1")

F32 = np.float32
ROWS, COLS = 134_300, 4096  # 2_200_371_200 bytes of float32: past 2 GiB
BLOCK = 4096  # rows per verification block
# Rows checked against the full oracle: the ends, the rows around the 2 GiB byte offset
# (row 131072 starts at byte 2^31), and the special rows written below.
BOUNDARY_ROW = (1 << 31) // (COLS * 4)
SPECIAL_ROWS = {3: "zeros", 77: "inf", 1000: "tiny", BOUNDARY_ROW: "boundary-row"}


def _fill(x: np.ndarray) -> None:
    rng = np.random.default_rng(123)
    for r0 in range(0, ROWS, BLOCK):
        r1 = min(ROWS, r0 + BLOCK)
        block = rng.standard_normal((r1 - r0, COLS), dtype=F32)
        # Per-row magnitudes from 2^-8 to 2^8, so the per-token scales differ.
        block *= np.exp2((np.arange(r0, r1) % 17 - 8).astype(F32))[:, None]
        x[r0:r1] = block
    x[3] = 0
    x[77, 5], x[77, 9] = np.inf, -np.inf
    x[1000] = x[1000] * F32(2.0 ** -140)  # float32 subnormals
    x.flush()


def _sample_rows():
    rows = set(range(0, 64)) | set(range(ROWS - 64, ROWS))
    rows |= set(range(BOUNDARY_ROW - 40, BOUNDARY_ROW + 40)) | set(SPECIAL_ROWS)
    rows |= set(np.random.default_rng(5).integers(0, ROWS, 200).tolist())
    return np.array(sorted(rows))


@pytest.fixture(scope="module")
def large_server(quantd, tmp_path_factory):
    srv = e2e_util.QuantdServer(tmp_path_factory.mktemp("quantd-large")).start()
    yield srv
    e2e_util.stop_and_check(srv, timeout=120)


def test_2_2GB_tensor_through_the_server(large_server, tmp_path):
    spec = oracle.Spec("int8", "token")
    x_path = tmp_path / "x.npy"
    x = np.lib.format.open_memmap(str(x_path), mode="w+", dtype=F32, shape=(ROWS, COLS))
    _fill(x)
    assert x_path.stat().st_size > 2.2e9 > 2 ** 31
    del x
    x = np.load(str(x_path), mmap_mode="r")
    before = metric_samples(large_server.scrape())

    # --- quantize ---------------------------------------------------------------------------
    q_path = tmp_path / "q.npz"
    proc = run_quantctl(["quantize", "--format=int8", "--granularity=token", x_path, q_path],
                        server=large_server.address, timeout=900)
    got_metrics = e2e_util.last_json_line(proc.stdout)
    with np.load(str(q_path)) as z:
        codes = z["codes"]
        scales = z["scales"]
        assert list(z["shape"]) == [ROWS, COLS]
    assert codes.dtype == np.int8 and codes.shape == (ROWS, COLS)
    assert scales.dtype == F32 and scales.shape == (ROWS, 1)

    sums = dict(x2=0.0, y2=0.0, xy=0.0, e2=0.0, max_abs=0.0, count=0, nonfinite=0)
    for r0 in range(0, ROWS, BLOCK):
        r1 = min(ROWS, r0 + BLOCK)
        xb = np.asarray(x[r0:r1])
        # Scales: the oracle's, every one of them.
        want_s, _ = oracle.compute_scales(xb, spec, xb.shape)
        e2e_util.assert_same_bits(scales[r0:r1], want_s, f"scales of rows {r0}:{r1}")
        # Codes: FORMATS.md's int8 symmetric RNE formula on every element (q = clamp(rne(x / s))
        # in float32), the full oracle on the sampled rows below.
        with np.errstate(over="ignore", invalid="ignore"):
            want_q = np.clip(np.rint(xb / want_s), -128, 127).astype(np.int8)
        e2e_util.assert_same_bits(codes[r0:r1], want_q, f"codes of rows {r0}:{r1}")
        x_hat = (want_s * want_q.astype(F32)).astype(F32)
        finite = np.isfinite(xb)
        xd = xb[finite].astype(np.float64)
        yd = x_hat[finite].astype(np.float64)
        d = xd - yd
        sums["x2"] += float(xd @ xd)
        sums["y2"] += float(yd @ yd)
        sums["xy"] += float(xd @ yd)
        sums["e2"] += float(d @ d)
        sums["max_abs"] = max(sums["max_abs"], float(np.abs(d).max()) if d.size else 0.0)
        sums["count"] += int(xd.size)
        sums["nonfinite"] += int(xb.size - xd.size)
    sample = _sample_rows()
    want = oracle.quantize(np.asarray(x[sample]), spec)
    e2e_util.assert_same_bits(codes[sample], want.codes, "codes of the sampled rows (oracle)")
    e2e_util.assert_same_bits(scales[sample], want.scales, "scales of the sampled rows (oracle)")
    assert got_metrics["count"] == sums["count"]
    assert got_metrics["nonfinite_count"] == sums["nonfinite"] == 2
    want_metrics = {
        "mse": sums["e2"] / sums["count"], "rmse": math.sqrt(sums["e2"] / sums["count"]),
        "max_abs_err": sums["max_abs"], "sqnr_db": 10 * math.log10(sums["x2"] / sums["e2"]),
        "cosine": sums["xy"] / math.sqrt(sums["x2"] * sums["y2"]),
        "rel_fro_err": math.sqrt(sums["e2"] / sums["x2"]),
        "count": sums["count"], "nonfinite_count": sums["nonfinite"]}
    e2e_util.assert_metrics_close(got_metrics, want_metrics, what="2.2 GB metrics")
    del codes

    # --- dequantize -------------------------------------------------------------------------
    out_path = tmp_path / "x_hat.npy"
    run_quantctl(["dequantize", q_path, out_path], server=large_server.address, timeout=900)
    x_hat = np.load(str(out_path), mmap_mode="r")
    assert x_hat.dtype == F32 and x_hat.shape == (ROWS, COLS)
    with np.load(str(q_path)) as z:
        codes = z["codes"]
    for r0 in range(0, ROWS, BLOCK):
        r1 = min(ROWS, r0 + BLOCK)
        want_hat = (scales[r0:r1] * codes[r0:r1].astype(F32)).astype(F32)
        e2e_util.assert_same_bits(np.asarray(x_hat[r0:r1]), want_hat, f"x̂ of rows {r0}:{r1}")
    e2e_util.assert_same_floats(np.asarray(x_hat[sample]), oracle.dequantize(want),
                                "x̂ of the sampled rows (oracle)")

    # Both directions went through the streamed RPCs.
    after = metric_samples(large_server.scrape())

    def delta(name, **labels):
        def total(samples):
            return sum(v for l, v in samples.get(name, [])
                       if all(l.get(k) == w for k, w in labels.items()))
        return total(after) - total(before)

    assert delta("quantd_requests_total", method="QuantizeStream", code="OK") == 1
    assert delta("quantd_requests_total", method="DequantizeStream", code="OK") == 1
    assert delta("quantd_requests_total", method="Quantize") == 0
    assert delta("quantd_bytes_received_total", method="QuantizeStream") >= ROWS * COLS * 4
    assert delta("quantd_bytes_sent_total", method="DequantizeStream") >= ROWS * COLS * 4
    del x, x_hat, codes
    for path in (x_path, q_path, out_path):
        path.unlink()

"""`quantctl compress` end to end: a synthetic sharded Llama-style checkpoint through two real
quantd replicas (round-robin, with a small message limit so that the larger tensors take the
streamed path) for every scheme, checked against compress_util's independent NumPy
implementation of each scheme (codes, scales and the report's error metrics) and the
compressed-tensors layout (names, dtypes, shapes, config.json); pass-through tensors and copied
files byte for byte; the embedded backend giving the same bytes; resuming after a kill, after
damage, and starting over when the job changes; hostile inputs refused with exit code 2."""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import shutil
import signal
import struct
import subprocess
import time

import numpy as np
import pytest

pytest.importorskip("ml_dtypes")
safetensors = pytest.importorskip("safetensors")
from safetensors import safe_open  # noqa: E402

import compress_util as cu  # noqa: E402
import e2e_util  # noqa: E402
import oracle  # noqa: E402
from e2e_util import QuantdServer, requests_served, run_quantctl  # noqa: E402

F32 = np.float32
COPIED = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
QUANTIZE = ("Quantize", "QuantizeStream")  # the RPCs compress quantizes a weight with


@pytest.fixture(scope="module")
def replicas(quantd, tmp_path_factory):
    """Two CPU replicas that stream anything above 128 KiB (a 320 x 256 BF16 weight is 160 KiB;
    the client learns the limit from whichever replica it asks, so both have the same)."""
    flags = ["--max-message-bytes=131072", "--stream-chunk-bytes=32768"]
    a = QuantdServer(tmp_path_factory.mktemp("a"), flags, name="a").start()
    b = QuantdServer(tmp_path_factory.mktemp("b"), flags, name="b").start()
    yield a, b
    for srv in (a, b):
        e2e_util.stop_and_check(srv)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("checkpoint") / "llama"
    return directory, cu.write_checkpoint(directory)


def compress(args, server=None, check=True):
    return run_quantctl(["compress", "--progress=lines", *[str(a) for a in args]], server=server,
                        check=check, timeout=300)


def assert_same_rows(got: list, want: list) -> None:
    """Report rows equal, except that summed metrics may differ in the last bits (DESIGN.md:
    the CPU backend's row threads, as many as the process has, split the sums)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        metrics = ("sqnr_db", "cosine", "max_abs_err")
        assert {k: v for k, v in g.items() if k not in metrics} == \
            {k: v for k, v in w.items() if k not in metrics}
        for key in metrics:
            if w[key] is None:
                assert g[key] is None, (g["name"], key)
            else:
                assert math.isclose(g[key], w[key], rel_tol=1e-9), (g["name"], key, g[key], w[key])


def load_output(out: pathlib.Path) -> dict:
    """name -> (dtype, shape, bytes) over every shard the index names, checking the index
    against the shards and the safetensors package's reading against ours."""
    index = json.loads((out / "model.safetensors.index.json").read_text())
    weight_map = index["weight_map"]
    shards = sorted(set(weight_map.values()))
    assert shards == sorted(p.name for p in out.glob("*.safetensors")), shards
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                      for i in range(1, len(shards) + 1)]
    tensors = {}
    for shard in shards:
        raw = cu.read_raw(out / shard)
        assert sorted(n for n, f in weight_map.items() if f == shard) == sorted(raw)
        with safe_open(str(out / shard), framework="numpy") as f:
            assert f.metadata() == {"format": "pt"}
            assert sorted(f.keys()) == sorted(raw)
            for name in f.keys():
                dtype, shape, data = raw[name]
                piece = f.get_slice(name)
                assert (piece.get_dtype(), tuple(piece.get_shape())) == (dtype, shape), name
                if dtype != "F8_E4M3":  # safetensors' numpy side has no float8 dtype
                    assert f.get_tensor(name).tobytes() == data, name
        tensors.update(raw)
    assert index["metadata"]["total_size"] == sum(len(v[2]) for v in tensors.values())
    return tensors


def check_output(out: pathlib.Path, in_dir: pathlib.Path, inputs: dict, scheme: str,
                 include=None, ignored=()) -> dict:
    """Everything `quantctl compress` wrote against the oracle. Returns report.json."""
    got = load_output(out)
    raw_in = {}
    for shard in in_dir.glob("*.safetensors"):
        raw_in.update(cu.read_raw(shard))
    report = json.loads((out / "report.json").read_text())
    rows = {row["name"]: row for row in report["tensors"]}
    assert list(rows) == cu.file_order(in_dir), "report rows must follow the input order"
    assert sorted(rows) == sorted(inputs)
    expected_names = set()
    ignore_list = []
    expected = cu.expected_checkpoint(scheme, inputs, include, ignored)
    for name in rows:
        x = inputs[name]
        module = name[:-len(".weight")]
        row = rows[name]
        assert row["shape"] == list(x.shape) and row["bytes_before"] == x.nbytes, row
        if name not in expected:
            assert got[name] == raw_in[name], f"{name} must pass through byte for byte"
            expected_names.add(name)
            assert row["scheme"] == "dense" and row["sqnr_db"] is None, row
            if name.endswith(".weight") and not module.endswith("norm"):
                ignore_list.append(module)
            continue
        want, x_hat = expected[name]
        for tensor, (dtype, shape, data) in want.items():
            g_dtype, g_shape, g_data = got[tensor]
            assert (g_dtype, g_shape) == (dtype, tuple(shape)), (tensor, g_dtype, g_shape)
            if g_data != data:
                g = np.frombuffer(g_data, np.uint8)
                w = np.frombuffer(data, np.uint8)
                first = int(np.flatnonzero(g != w)[0])
                raise AssertionError(f"{tensor} ({scheme}): {int((g != w).sum())} bytes differ "
                                     f"from the oracle, first at byte {first}")
        expected_names.update(want)
        assert row["scheme"] == scheme and row["backend"] == "cpu", row
        assert row["bytes_after"] == sum(len(v[2]) for v in want.values()), row
        m = oracle.metrics(x, x_hat)
        for key in ("sqnr_db", "cosine", "max_abs_err"):
            assert math.isclose(row[key], m[key], rel_tol=1e-4), (name, key, row[key], m[key])
    assert set(got) == expected_names, set(got) ^ expected_names

    config = json.loads((out / "config.json").read_text())
    quantization = config.pop("quantization_config")
    assert config == cu.LLAMA_CONFIG, "the rest of config.json must be unchanged"
    preset, fmt, weights, activations = cu.PRESETS[scheme]
    assert quantization == {
        "config_groups": {"group_0": {"format": fmt, "input_activations": activations,
                                      "output_activations": None, "targets": ["Linear"],
                                      "weights": weights}},
        "format": fmt, "global_compression_ratio": None, "ignore": ignore_list,
        "kv_cache_scheme": None, "moe_sparsity_config": None,
        "quant_method": "compressed-tensors", "quantization_status": "compressed",
        "sparsity_config": {}, "transform_config": {}, "version": "0.20.0"}
    assert (report["scheme"], report["preset"], report["format"]) == (scheme, preset, fmt)

    with open(out / "report.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["name"] for r in csv_rows] == list(rows)
    for r in csv_rows:
        assert r["scheme"] == rows[r["name"]]["scheme"]
        assert int(r["bytes_after"]) == rows[r["name"]]["bytes_after"]
    for name in COPIED:
        assert (out / name).read_bytes() == (in_dir / name).read_bytes(), name
    assert not (out / "pytorch_model.bin").exists() and not (out / "original").exists()
    return report


@pytest.mark.parametrize("scheme", cu.SCHEMES)
def test_every_scheme_through_two_replicas(replicas, checkpoint, tmp_path, scheme):
    a, b = replicas
    in_dir, inputs = checkpoint
    before = [requests_served(s, *QUANTIZE) for s in (a, b)]
    streamed_before = sum(requests_served(s, "QuantizeStream") for s in (a, b))
    out = tmp_path / "out"
    proc = compress([f"--scheme={scheme}", "--max-shard-size=400KB", "--in-flight=4", in_dir,
                     out], server=f"{a.address},{b.address}")
    report = check_output(out, in_dir, inputs, scheme)
    assert report["shards"] > 2 and report["shards_written"] == report["shards"]
    after = [requests_served(s, *QUANTIZE) for s in (a, b)]
    quantized = sum(row["scheme"] == scheme for row in report["tensors"])
    assert sum(after) - sum(before) >= quantized, (before, after)
    assert sum(requests_served(s, "QuantizeStream") for s in (a, b)) > streamed_before
    assert "| total |" in proc.stdout, proc.stdout
    assert "quantizing on" in proc.stderr and "wrote model-00001-of-" in proc.stderr
    if scheme == "w4a16":
        assert "in_features 320 is not a multiple of 128" in proc.stderr, proc.stderr
    if scheme == "nvfp4":
        # vLLM's fused qkv_proj / gate_up_proj hold one global scale: the members share theirs,
        # the smallest (layer 0's q_proj holds the outlier, so k and v take its S_enc).
        assert "nvfp4: 4 fused groups (q/k/v, gate/up) share one global scale" in proc.stderr
        got = load_output(out)
        for layer in range(cu.LAYERS):
            for members in (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                            ("mlp.gate_proj", "mlp.up_proj")):
                scales = {got[f"model.layers.{layer}.{m}.weight_global_scale"][2]
                          for m in members}
                assert len(scales) == 1, (layer, members)
        own_k = oracle.nvfp4(inputs["model.layers.0.self_attn.k_proj.weight"])[2]
        shared = np.frombuffer(got["model.layers.0.self_attn.k_proj.weight_global_scale"][2], F32)
        assert shared[0] < own_k
    # The embedded backend writes the very same bytes.
    local = tmp_path / "local"
    compress([f"--scheme={scheme}", "--max-shard-size=400KB", "--local", in_dir, local],
             server=f"{a.address},{b.address}")
    for path in sorted(out.glob("*.safetensors")) + [out / "config.json"]:
        assert (local / path.name).read_bytes() == path.read_bytes(), path.name


def test_both_replicas_served_the_schemes(replicas):
    """round_robin only picks replicas it is connected to, so one short job may land on one;
    over the six jobs above both must have worked."""
    served = [requests_served(s, *QUANTIZE) for s in replicas]
    assert all(count > 0 for count in served), served


def test_ignore_and_include(checkpoint, tmp_path):
    in_dir, inputs = checkpoint
    out = tmp_path / "out"
    compress(["--scheme=fp8-dynamic", r"--ignore=layers\.1\.self_attn\.o_proj$",
              "--include=lm_head", in_dir, out])
    report = check_output(out, in_dir, inputs, "fp8-dynamic", include="lm_head",
                          ignored=("layers.1.self_attn.o_proj",))
    rows = {row["name"]: row for row in report["tensors"]}
    assert rows["lm_head.weight"]["scheme"] == "fp8-dynamic"  # 1000 rows: ragged is fine
    assert rows["model.layers.1.self_attn.o_proj.weight"]["note"] == "ignored by --ignore"


def test_resume_after_a_kill(quantd, quantctl, checkpoint, tmp_path):
    """Both replicas stopped (SIGSTOP): the first shard holds only pass-through tensors, so it
    is written and recorded while every quantize call hangs; quantctl is then killed with a
    shard half-written. The re-run keeps shard 1, sweeps the dead run's temporary, and ends with
    the same files as an uninterrupted run."""
    in_dir, _ = checkpoint
    flags = ["--scheme=w8a8-int8", "--max-shard-size=520KB"]
    reference = tmp_path / "reference"
    compress([*flags, "--local", in_dir, reference])
    count = len(list(reference.glob("*.safetensors")))
    a = QuantdServer(tmp_path / "a", name="a").start()
    b = QuantdServer(tmp_path / "b", name="b").start()
    both = f"{a.address},{b.address}"
    out = tmp_path / "out"
    try:
        for srv in (a, b):
            os.kill(srv.proc.pid, signal.SIGSTOP)
        proc = subprocess.Popen([quantctl, f"--server={both}", "compress", "--progress=lines",
                                 *flags, str(in_dir), str(out)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        manifest = out / "compress_manifest.json"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"quantctl exited {proc.returncode}: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no shard recorded within 60 s"
            if manifest.exists() and json.loads(manifest.read_text())["shards"]:
                break
            time.sleep(0.02)
        time.sleep(0.2)
        proc.kill()
        proc.communicate()
        assert [s["file"] for s in json.loads(manifest.read_text())["shards"]] == [
            f"model-00001-of-{count:05d}.safetensors"]
        leftovers = [p.name for p in out.iterdir() if ".tmp." in p.name]
        assert leftovers, "the killed run should have left a half-written shard"
        for srv in (a, b):
            os.kill(srv.proc.pid, signal.SIGCONT)
        again = compress([*flags, in_dir, out], server=both)
        assert f"resuming: 1 of {count} shards are already written" in again.stderr, again.stderr
        assert not [p.name for p in out.iterdir() if ".tmp." in p.name]
        report = json.loads((out / "report.json").read_text())
        assert (report["shards_resumed"], report["shards_written"]) == (1, count - 1)
        want = json.loads((reference / "report.json").read_text())
        assert_same_rows(report["tensors"], want["tensors"])
        for path in reference.iterdir():
            if path.name not in ("report.json", "report.csv", "compress_manifest.json"):
                assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    finally:
        for srv in (a, b):
            if srv.alive():
                os.kill(srv.proc.pid, signal.SIGCONT)
        try:
            e2e_util.stop_and_check(a)
        finally:
            e2e_util.stop_and_check(b)


def test_resume_redoes_damaged_shards_and_restarts_a_changed_job(checkpoint, tmp_path):
    in_dir = tmp_path / "in"
    shutil.copytree(checkpoint[0], in_dir)
    out = tmp_path / "out"
    flags = ["--scheme=fp8-dynamic", "--max-shard-size=300KB", "--local"]
    compress([*flags, in_dir, out])
    first = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".safetensors"}
    shards = sorted(first)
    assert len(shards) >= 4
    damaged = bytearray(first[shards[1]])
    damaged[-1] ^= 0x40
    (out / shards[1]).write_bytes(bytes(damaged))
    (out / shards[2]).unlink()
    (out / f"{shards[3]}.tmp.4242.0").write_bytes(b"left by a killed run")

    again = compress([*flags, in_dir, out])
    assert f"redoing {shards[1]} does not match its checksum" in again.stderr, again.stderr
    assert f"redoing {shards[2]} is missing" in again.stderr, again.stderr
    assert f"resuming: {len(shards) - 2} of {len(shards)}" in again.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".safetensors"} == first
    assert not (out / f"{shards[3]}.tmp.4242.0").exists()
    report = json.loads((out / "report.json").read_text())
    assert (report["shards_resumed"], report["shards_written"]) == (len(shards) - 2, 2)
    assert len(report["tensors"]) == len(checkpoint[1])

    # A finished job re-run keeps everything.
    again = compress([*flags, in_dir, out])
    assert f"resuming: {len(shards)} of {len(shards)}" in again.stderr

    # Another scheme into the same directory is another job.
    other = compress(["--scheme=w8a8-int8", "--max-shard-size=300KB", "--local", in_dir, out])
    assert "starting over: the manifest describes another job" in other.stderr, other.stderr
    assert json.loads((out / "report.json").read_text())["shards_resumed"] == 0
    check_output(out, in_dir, checkpoint[1], "w8a8-int8")

    # So is a changed input: the same shapes, other values, a newer file.
    compress(["--scheme=w8a8-int8", "--max-shard-size=300KB", "--local", in_dir, out])
    changed = cu.write_checkpoint(in_dir, seed=5)
    stat = (in_dir / "model-00002-of-00002.safetensors").stat()
    os.utime(in_dir / "model-00002-of-00002.safetensors",
             ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    redo = compress(["--scheme=w8a8-int8", "--max-shard-size=300KB", "--local", in_dir, out])
    assert "starting over" in redo.stderr, redo.stderr
    check_output(out, in_dir, changed, "w8a8-int8")


def test_fewer_shards_remove_the_earlier_jobs_extra_shards(checkpoint, tmp_path):
    in_dir, inputs = checkpoint
    out = tmp_path / "out"
    compress(["--scheme=nvfp4", "--max-shard-size=200KB", "--local", in_dir, out])
    assert len(list(out.glob("*.safetensors"))) > 3
    proc = compress(["--scheme=nvfp4", "--local", in_dir, out])
    assert "removing model-00002-of-" in proc.stderr
    check_output(out, in_dir, inputs, "nvfp4")  # exactly one shard left
    assert [p.name for p in out.glob("*.safetensors")] == ["model-00001-of-00001.safetensors"]


# ---------------------------------------------------------------------------------------------
# Refusals

def safetensors_bytes(header, data: bytes = b"") -> bytes:
    text = (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(text)) + text + data


# Two of tests/client/safetensors_test.cc's refusals (which holds the whole table), to show that
# compress exits 2 naming the file: a bad header, and offsets that contradict each other.
HOSTILE_SHARDS = {
    "JSON garbage": (safetensors_bytes("{not json at all"), "header is not valid JSON"),
    "offsets overlap": (safetensors_bytes(
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
         "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
        "overlaps \"a\""),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_SHARDS))
def test_hostile_shard_is_refused(checkpoint, tmp_path, case):
    in_dir = tmp_path / "in"
    shutil.copytree(checkpoint[0], in_dir)
    content, fragment = HOSTILE_SHARDS[case]
    (in_dir / "model-00002-of-00002.safetensors").write_bytes(content)
    proc = compress(["--scheme=fp8-dynamic", "--local", in_dir, tmp_path / "out"], check=False)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert fragment in proc.stderr and "model-00002-of-00002.safetensors" in proc.stderr, \
        proc.stderr
    assert not list((tmp_path / "out").glob("*.safetensors"))


def test_truncated_shard_is_refused(checkpoint, tmp_path):
    in_dir = tmp_path / "in"
    shutil.copytree(checkpoint[0], in_dir)
    shard = in_dir / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1000])
    proc = compress(["--scheme=nvfp4", "--local", in_dir, tmp_path / "out"], check=False)
    assert proc.returncode == 2 and "is the file truncated?" in proc.stderr, proc.stderr


@pytest.mark.parametrize("case,fragment", [
    ("index escapes the directory", "not a .safetensors file name in the same directory"),
    ("index misses a tensor", "does not list it"),
    ("index names a tensor no shard holds", "which does not hold it"),
    ("already quantized", "already has a quantization_config"),
    ("no config", "has no config.json"),
    ("no weights", "has neither model.safetensors.index.json nor model.safetensors"),
])
def test_bad_checkpoint_is_refused(checkpoint, tmp_path, case, fragment):
    in_dir = tmp_path / "in"
    shutil.copytree(checkpoint[0], in_dir)
    index_path = in_dir / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    if case == "index escapes the directory":
        index["weight_map"]["lm_head.weight"] = "../model-00002-of-00002.safetensors"
    elif case == "index misses a tensor":
        del index["weight_map"]["lm_head.weight"]
    elif case == "index names a tensor no shard holds":
        index["weight_map"]["model.extra.weight"] = "model-00002-of-00002.safetensors"
    elif case == "already quantized":
        config = dict(cu.LLAMA_CONFIG, quantization_config={"quant_method": "fp8"})
        (in_dir / "config.json").write_text(json.dumps(config))
    elif case == "no config":
        (in_dir / "config.json").unlink()
    elif case == "no weights":
        index_path.unlink()
    if index_path.exists():
        index_path.write_text(json.dumps(index))
    proc = compress(["--scheme=w4a16", "--local", in_dir, tmp_path / "out"], check=False)
    assert proc.returncode == 2 and fragment in proc.stderr, (proc.returncode, proc.stderr)


@pytest.mark.parametrize("args,fragment", [
    (["--scheme=fp4-fancy"], "accepted: fp8-dynamic, fp8-block, w8a8-int8, w4a16, nvfp4, mxfp4"),
    ([], "compress needs --scheme"),
    (["--scheme=nvfp4", "--ignore=(unclosed"], "--ignore=(unclosed is not an RE2"),
    (["--scheme=nvfp4", "--max-shard-size=lots"], "is not a positive size"),
    (["--scheme=nvfp4", "--in-flight=0"], "--in-flight=0 must be in [1, 256]"),
])
def test_bad_flags_exit_2(checkpoint, tmp_path, args, fragment):
    proc = compress([*args, "--local", checkpoint[0], tmp_path / "out"], check=False)
    assert proc.returncode == 2 and fragment in proc.stderr, (proc.returncode, proc.stderr)


def test_output_directory_must_be_new_empty_or_ours(checkpoint, tmp_path):
    in_dir = tmp_path / "in"
    shutil.copytree(checkpoint[0], in_dir)
    proc = compress(["--scheme=nvfp4", "--local", in_dir, in_dir], check=False)
    assert proc.returncode == 2 and "OUT_DIR is IN_DIR" in proc.stderr, proc.stderr
    # Another model's directory: nothing of it is touched.
    other = tmp_path / "other"
    shutil.copytree(checkpoint[0], other)
    before = {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()}
    proc = compress(["--scheme=nvfp4", "--local", in_dir, other], check=False)
    assert proc.returncode == 2 and "is not an earlier `quantctl compress` output" in proc.stderr
    assert {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()} == before

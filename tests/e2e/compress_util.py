"""Helpers of the `quantctl compress` tests (test_compress.py, test_compress_ct.py): a synthetic
sharded Llama-style checkpoint, a reader of safetensors files that does not go through our C++
code, and an independent NumPy implementation of every compression scheme, written from
shared/FORMATS.md (docs/FORMATS.md in a release) and the compressed-tensors layout:

  scheme        tensors of a quantized Linear "<m>"                       codes / scales
  fp8-dynamic   <m>.weight F8_E4M3 [N, K], <m>.weight_scale F32 [N, 1]     E4M3, amax / 448 per row
  fp8-block     <m>.weight F8_E4M3 [N, K], <m>.weight_scale F32            128x128 tiles
                [ceil(N/128), ceil(K/128)]
  w8a8-int8     <m>.weight I8 [N, K], <m>.weight_scale F32 [N, 1]          amax / 127 per row
  w4a16         <m>.weight_packed I32 [N, K/8], <m>.weight_scale F32       groups of 128, q + 8 in
                [N, K/128], <m>.weight_shape I64 [2]                        nibble i of word i / 8
  nvfp4         <m>.weight_packed U8 [N, K/2], <m>.weight_scale F8_E4M3    E2M1 low nibble first,
                [N, K/16], <m>.weight_global_scale F32 [1] = S_enc         blocks of 16
  mxfp4         <m>.weight_packed U8 [N, K/2], <m>.weight_scale U8         E2M1, E8M0 by the EVEN
                [N, K/32]                                                   rule, blocks of 32
"""

from __future__ import annotations

import json
import pathlib
import struct
from typing import Dict, Optional, Tuple

import ml_dtypes
import numpy as np

import oracle

F32 = np.float32
BF16 = ml_dtypes.bfloat16

SCHEMES = ("fp8-dynamic", "fp8-block", "w8a8-int8", "w4a16", "nvfp4", "mxfp4")

# What compressed-tensors 0.20.0's QuantizationConfig.model_dump() writes for each preset
# (weights, input_activations), and its CompressionFormat.
PRESETS = {
    "fp8-dynamic": ("FP8_DYNAMIC", "float-quantized",
                    {"dynamic": False, "group_size": None, "num_bits": 8, "strategy": "channel",
                     "symmetric": True, "type": "float"},
                    {"dynamic": True, "group_size": None, "num_bits": 8, "strategy": "token",
                     "symmetric": True, "type": "float"}),
    "fp8-block": ("FP8_BLOCK", "float-quantized",
                  {"block_structure": [128, 128], "dynamic": False, "group_size": None,
                   "num_bits": 8, "strategy": "block", "symmetric": True, "type": "float"},
                  {"dynamic": True, "group_size": 128, "num_bits": 8, "strategy": "group",
                   "symmetric": True, "type": "float"}),
    "w8a8-int8": ("W8A8", "int-quantized",
                  {"dynamic": False, "group_size": None, "num_bits": 8, "strategy": "channel",
                   "symmetric": True, "type": "int"},
                  {"dynamic": True, "group_size": None, "num_bits": 8, "strategy": "token",
                   "symmetric": True, "type": "int"}),
    "w4a16": ("W4A16", "pack-quantized",
              {"dynamic": False, "group_size": 128, "num_bits": 4, "strategy": "group",
               "symmetric": True, "type": "int"},
              None),
    "nvfp4": ("NVFP4A16", "nvfp4-pack-quantized",
              {"dynamic": False, "group_size": 16, "num_bits": 4,
               "scale_dtype": "torch.float8_e4m3fn", "strategy": "tensor_group",
               "symmetric": True, "type": "float"},
              None),
    "mxfp4": ("MXFP4A16", "mxfp4-pack-quantized",
              {"dynamic": False, "group_size": 32, "num_bits": 4, "scale_dtype": "torch.uint8",
               "strategy": "group", "symmetric": True, "type": "float"},
              None),
}

# in_features a scheme needs to be a multiple of (compressed-tensors refuses ragged groups).
IN_FEATURES_MULTIPLE = {"w4a16": 128, "nvfp4": 16, "mxfp4": 32}

# ---------------------------------------------------------------------------------------------
# The synthetic checkpoint

HIDDEN = 256
KV = 128
INTERMEDIATE = 320  # not a multiple of 128: ragged blocks (fp8-block), a dense down_proj (w4a16)
VOCAB = 1000        # ragged rows for lm_head when --include quantizes it
LAYERS = 2


def llama_tensors(seed: int = 0) -> Dict[str, np.ndarray]:
    """name -> array, in the order the shards hold them. Mostly BF16 as real checkpoints; layer
    1's q_proj is F32 and its o_proj F16 so that every input dtype goes through; a row of zeros
    (the scale floor) and an outlier land in layer 0's q_proj."""
    rng = np.random.default_rng(seed)

    def w(n, k, dtype=BF16, std=0.02):
        return (rng.standard_normal((n, k)) * std).astype(dtype)

    t: Dict[str, np.ndarray] = {"model.embed_tokens.weight": w(VOCAB, HIDDEN)}
    for layer in range(LAYERS):
        p = f"model.layers.{layer}."
        q = w(HIDDEN, HIDDEN, F32 if layer == 1 else BF16)
        if layer == 0:
            q[3, :] = 0
            q[7, 100] = 0.75
        t[p + "input_layernorm.weight"] = np.ones(HIDDEN, BF16)
        t[p + "self_attn.q_proj.weight"] = q
        t[p + "self_attn.k_proj.weight"] = w(KV, HIDDEN)
        t[p + "self_attn.v_proj.weight"] = w(KV, HIDDEN)
        t[p + "self_attn.o_proj.weight"] = w(HIDDEN, HIDDEN, np.float16 if layer == 1 else BF16)
        t[p + "post_attention_layernorm.weight"] = (1 + rng.standard_normal(HIDDEN) * 0.1).astype(BF16)
        t[p + "mlp.gate_proj.weight"] = w(INTERMEDIATE, HIDDEN)
        t[p + "mlp.up_proj.weight"] = w(INTERMEDIATE, HIDDEN)
        t[p + "mlp.down_proj.weight"] = w(HIDDEN, INTERMEDIATE)
    t["model.norm.weight"] = np.ones(HIDDEN, BF16)
    t["lm_head.weight"] = w(VOCAB, HIDDEN)
    return t


LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": HIDDEN,
    "intermediate_size": INTERMEDIATE,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "num_hidden_layers": LAYERS,
    "vocab_size": VOCAB,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def write_checkpoint(directory: pathlib.Path, seed: int = 0) -> Dict[str, np.ndarray]:
    """Two shards (embed_tokens and layer 0 in the first, the rest in the second) with their
    index, config.json, tokenizer files, a generation config, and things that must not be
    copied: a subdirectory and a pytorch_model.bin. Returns the tensors."""
    from safetensors.numpy import save_file

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = llama_tensors(seed)
    first = {k: v for k, v in tensors.items() if k.startswith(("model.embed", "model.layers.0."))}
    second = {k: v for k, v in tensors.items() if k not in first}
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map = {}
    for name, part in zip(names, (first, second)):
        save_file(part, str(directory / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    total = sum(v.nbytes for v in tensors.values())
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (directory / "config.json").write_text(json.dumps(LLAMA_CONFIG, indent=2))
    (directory / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {}}))
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
    (directory / "generation_config.json").write_text(json.dumps({"do_sample": True}))
    (directory / "pytorch_model.bin").write_bytes(b"not carried over")
    (directory / "original").mkdir(exist_ok=True)
    (directory / "original" / "params.json").write_text("{}")
    return tensors


# ---------------------------------------------------------------------------------------------
# Reading safetensors without our C++ code

def read_raw(path: pathlib.Path) -> Dict[str, Tuple[str, tuple, bytes]]:
    """name -> (dtype, shape, bytes), parsed by hand from the format's definition."""
    data = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        out[name] = (entry["dtype"], tuple(entry["shape"]), data[8 + n + begin:8 + n + end])
    return out


def file_order(directory: pathlib.Path) -> list:
    """Tensor names of a checkpoint's shards in the order quantctl reads (and reports) them:
    shard files by name, tensors by data offset within each."""
    names = []
    for path in sorted(pathlib.Path(directory).glob("*.safetensors")):
        data = path.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        header.pop("__metadata__", None)
        names += sorted(header, key=lambda name: header[name]["data_offsets"][0])
    return names


# ---------------------------------------------------------------------------------------------
# The schemes, from FORMATS.md

def finite_amax(x: np.ndarray) -> np.float32:
    x = oracle.to_f32(x)
    return F32(np.where(np.isfinite(x), np.abs(x), F32(0)).max())


def mxfp4_even(x: np.ndarray):
    """FORMATS.md MXFP4 of [N, K] (K % 32 == 0) with scale rule EVEN (what compressed-tensors'
    generate_mx_scales computes): X = unbiased exponent of (bits(amax) + 2^21) - 2, clamped to
    [-127, 127]; code = X + 127. Returns packed codes, E8M0 codes, x̂."""
    x = oracle.to_f32(x)
    rows, cols = x.shape
    finite = np.where(np.isfinite(x), np.abs(x), F32(0))
    amax = finite.reshape(rows, cols // 32, 32).max(axis=2).astype(F32)
    bits = amax.view(np.uint32).astype(np.uint64) + (1 << 21)
    exponent = ((bits >> np.uint64(23)) & np.uint64(0xFF)).astype(np.int64) - 127
    shared = np.clip(exponent - 2, -127, 127)
    scale = np.exp2(shared.astype(np.float64)).astype(F32)  # 2^-127 is an f32 subnormal: exact
    s = np.repeat(scale, 32, axis=1)
    codes, values = oracle.e2m1((x / s).astype(F32))
    x_hat = (values * s).astype(F32)
    return oracle.pack_nibbles(codes), (shared + 127).astype(np.uint8), x_hat


def fused_group(module: str) -> str:
    """The layers vLLM fuses (and so llm-compressor gives one NVFP4 global scale): q/k/v,
    MLA's q_a_proj / kv_a_proj_with_mqa, gate/up, under one parent module."""
    parent, _, leaf = module.rpartition(".")
    for kind, leaves in (("qkv", ("q_proj", "k_proj", "v_proj")),
                         ("mla", ("q_a_proj", "kv_a_proj_with_mqa")),
                         ("gate_up", ("gate_proj", "up_proj"))):
        if leaf in leaves:
            return f"{parent}#{kind}"
    return ""


def shared_global_scales(inputs: Dict[str, np.ndarray], quantized) -> Dict[str, np.float32]:
    """name -> the S_enc a quantized NVFP4 weight shares with its fused group: fp32(2688 / the
    group's amax), which is the smallest of the members' own (llm-compressor takes the min)."""
    groups: Dict[str, list] = {}
    for name in quantized:
        group = fused_group(name[:-len(".weight")])
        if group:
            groups.setdefault(group, []).append(name)
    shared = {}
    for names in groups.values():
        own = [oracle.nvfp4(inputs[n])[2] for n in names]
        s_enc = oracle.nvfp4_global_scale(max(finite_amax(inputs[n]) for n in names))
        assert s_enc == min(own)
        for name in names:
            shared[name] = s_enc
    return shared


def expected_layer(scheme: str, module: str, x: np.ndarray, s_enc=None):
    """The tensors the scheme writes for weight `x` of `module`: {name: (dtype, shape, bytes)},
    and x̂ (float32) as the stored codes and scales give it back. `s_enc`: NVFP4's shared global
    scale (shared_global_scales)."""
    n, k = x.shape
    if scheme in ("fp8-dynamic", "fp8-block", "w8a8-int8", "w4a16"):
        spec = {
            "fp8-dynamic": oracle.Spec("fp8-e4m3", "channel"),
            "fp8-block": oracle.Spec("fp8-e4m3", "block", block=(128, 128)),
            "w8a8-int8": oracle.Spec("int8", "channel"),
            "w4a16": oracle.Spec("int4", "group", group_size=128, packing="int32_offset"),
        }[scheme]
        result = oracle.quantize(x, spec)
        x_hat = oracle.dequantize(result)
        out = {}
        if scheme == "w4a16":
            out[module + ".weight_packed"] = ("I32", result.codes.shape, result.codes.tobytes())
            out[module + ".weight_shape"] = ("I64", (2,), np.array([n, k], np.int64).tobytes())
        else:
            dtype = "I8" if scheme == "w8a8-int8" else "F8_E4M3"
            out[module + ".weight"] = (dtype, (n, k), result.codes.tobytes())
        out[module + ".weight_scale"] = ("F32", result.scales.shape,
                                         result.scales.astype(F32).tobytes())
        return out, x_hat
    if scheme == "nvfp4":
        packed, scales, s_enc, x_hat = oracle.nvfp4(x, s_enc)
        return {
            module + ".weight_packed": ("U8", packed.shape, packed.tobytes()),
            module + ".weight_scale": ("F8_E4M3", scales.shape, scales.tobytes()),
            module + ".weight_global_scale": ("F32", (1,), np.array([s_enc], F32).tobytes()),
        }, x_hat
    if scheme == "mxfp4":
        packed, scales, x_hat = mxfp4_even(x)
        return {
            module + ".weight_packed": ("U8", packed.shape, packed.tobytes()),
            module + ".weight_scale": ("U8", scales.shape, scales.tobytes()),
        }, x_hat
    raise ValueError(scheme)


def expected_checkpoint(scheme: str, inputs: Dict[str, np.ndarray], include=None,
                        ignored=()) -> Dict[str, tuple]:
    """name -> (output tensors, x̂) for every input weight the scheme quantizes."""
    quantized = [name for name, x in inputs.items()
                 if quantized_by_default(name, x, scheme, include)
                 and not any(name[:-len(".weight")].endswith(m) for m in ignored)]
    shared = shared_global_scales(inputs, quantized) if scheme == "nvfp4" else {}
    return {name: expected_layer(scheme, name[:-len(".weight")], inputs[name], shared.get(name))
            for name in quantized}


def quantized_by_default(name: str, x: np.ndarray, scheme: str,
                         include: Optional[str] = None) -> bool:
    """Whether `quantctl compress` quantizes this input tensor (no --ignore)."""
    import re

    if not name.endswith(".weight") or x.ndim != 2:
        return False
    module = name[:-len(".weight")]
    default = re.search(r"(^|\.)lm_head$|(^|\.)(wte|wpe)$|embed|norm", module) is None
    if not default and not (include and re.search(include, module)):
        return False
    multiple = IN_FEATURES_MULTIPLE.get(scheme, 1)
    return x.shape[1] % multiple == 0

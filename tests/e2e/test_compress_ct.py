"""The output of `quantctl compress` read back by compressed-tensors itself (and by transformers,
which loads compressed-tensors checkpoints through it), for every scheme:

  * config.json's quantization_config parses as compressed-tensors' QuantizationConfig, and
    its scheme equals the library's own preset (PRESET_SCHEMES) with the format we name;
  * each quantized module decompresses through the compressor registered for that format
    (BaseCompressor registry, the classmethods ModelCompressor runs) into the x̂ of
    compress_util's NumPy oracle;
  * the model-free CompressedTensorsDequantizer takes the whole directory (ignore list
    included) and finds no orphan quantization parameters;
  * transformers' AutoModelForCausalLM.from_pretrained(dequantize) builds the Llama model from
    it, with the same weights, and runs a forward pass.

It needs torch and compressed-tensors (and transformers for the last check), which the repo's
.venv does not carry: it skips there. Run it with an environment that has them, e.g.
  python3 -m venv /work/ct-venv && /work/ct-venv/bin/pip install torch compressed-tensors \\
      transformers safetensors numpy ml_dtypes pytest
  QUANTCTL_BIN=build/client/quantctl /work/ct-venv/bin/python -m pytest tests/e2e/test_compress_ct.py
The numbers are computed in this process (--local): test_compress.py shows the servers give
the same bytes."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("compressed_tensors")
pytest.importorskip("safetensors")
import compressed_tensors  # noqa: E402
from compressed_tensors.compressors import BaseCompressor  # noqa: E402
from compressed_tensors.quantization import (  # noqa: E402
    QuantizationConfig, QuantizationStatus, preset_name_to_scheme)
from safetensors.torch import load_file  # noqa: E402

import compress_util as cu  # noqa: E402
from e2e_util import run_quantctl  # noqa: E402

F32 = np.float32
# compressed-tensors decompresses FP4 into bfloat16 (unpack_fp4_from_uint8's default dtype);
# the values it computes are ours rounded to bfloat16.
BF16_RESULT = {"nvfp4", "mxfp4"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("checkpoint") / "llama"
    return directory, cu.write_checkpoint(directory)


@pytest.fixture(scope="module")
def outputs(quantctl, checkpoint, tmp_path_factory):
    in_dir, _ = checkpoint
    result = {}
    for scheme in cu.SCHEMES:
        out = tmp_path_factory.mktemp(scheme) / "out"
        run_quantctl(["compress", f"--scheme={scheme}", "--local", "--progress=off",
                      "--max-shard-size=600KB", in_dir, out], timeout=300)
        result[scheme] = out
    return result


def expected_weights(scheme: str, inputs: dict) -> dict:
    """module weight name -> the float32 x̂ a decompressor must give back."""
    want = {}
    for name, (_, x_hat) in cu.expected_checkpoint(scheme, inputs).items():
        if scheme in BF16_RESULT:
            x_hat = x_hat.astype(cu.BF16).astype(F32)
        want[name] = x_hat
    return want


@pytest.mark.parametrize("scheme", cu.SCHEMES)
def test_config_is_the_compressed_tensors_preset(outputs, scheme):
    config = json.loads((outputs[scheme] / "config.json").read_text())["quantization_config"]
    parsed = QuantizationConfig.model_validate(config)
    preset, fmt, _, _ = cu.PRESETS[scheme]
    want = preset_name_to_scheme(preset, ["Linear"])
    want.format = fmt
    group = parsed.config_groups["group_0"]
    assert (group.targets, group.format, group.output_activations) == (["Linear"], fmt, None)
    for ours, theirs in ((group.weights, want.weights),
                         (group.input_activations, want.input_activations)):
        assert (ours is None) == (theirs is None)
        if ours is None:
            continue
        fields = ("num_bits", "type", "symmetric", "group_size", "strategy", "block_structure",
                  "dynamic", "actorder", "scale_dtype")
        assert {f: getattr(ours, f) for f in fields} == {f: getattr(theirs, f) for f in fields}
    assert parsed.format == fmt and parsed.quantization_status == QuantizationStatus.COMPRESSED
    # Field for field what the library writes for the same configuration (its update_config).
    # (Its own dump does not carry zp_dtype, which a symmetric scheme never uses; for MXFP4 the
    # preset's uint8 then reads back as the inferred float8, in its files as in ours.)
    reference = QuantizationConfig(config_groups={"group_0": want}, format=fmt,
                                   ignore=config["ignore"],
                                   quantization_status=QuantizationStatus.COMPRESSED)
    dumped = json.loads(json.dumps(reference.model_dump(exclude=["quant_method"]), default=str))
    ours = {k: v for k, v in config.items()
            if k not in ("quant_method", "sparsity_config", "transform_config", "version")}
    assert ours == dumped
    assert group == QuantizationConfig.model_validate(dumped).config_groups["group_0"]
    assert (config["quant_method"], config["sparsity_config"], config["transform_config"]) == (
        "compressed-tensors", {}, {})


@pytest.mark.parametrize("scheme", cu.SCHEMES)
def test_registered_compressor_decompresses_to_the_oracle(outputs, checkpoint, scheme):
    _, inputs = checkpoint
    out = outputs[scheme]
    tensors = {}
    for shard in sorted(out.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    group = QuantizationConfig.model_validate(config).config_groups["group_0"]
    compressor = BaseCompressor.get_value_from_registry(group.format)
    params = compressor.compression_param_names(group)
    want = expected_weights(scheme, inputs)
    assert want, "no module was quantized"
    for name, x_hat in want.items():
        module = name[:-len(".weight")]
        state = {p: tensors[f"{module}.{p}"] for p in params}
        got = compressor.decompress(state, group)["weight"].to(torch.float32).numpy()
        np.testing.assert_array_equal(got, x_hat, err_msg=f"{scheme} {module}")


@pytest.mark.parametrize("scheme", cu.SCHEMES)
def test_model_free_dequantizer_reads_the_directory(outputs, checkpoint, scheme):
    from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import (
        CompressedTensorsDequantizer)

    _, inputs = checkpoint
    out = outputs[scheme]
    tensors = {}
    for shard in sorted(out.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    dense = CompressedTensorsDequantizer(str(out), dtype=torch.float32).validate(tensors)
    assert sorted(dense) == sorted(inputs)
    want = expected_weights(scheme, inputs)
    for name, x in inputs.items():
        got = dense[name].to(torch.float32).numpy()
        expected = want.get(name, np.asarray(x).astype(F32))
        np.testing.assert_array_equal(got, expected, err_msg=f"{scheme} {name}")


@pytest.mark.parametrize("scheme", cu.SCHEMES)
def test_transformers_loads_the_model(outputs, checkpoint, scheme):
    transformers = pytest.importorskip("transformers")
    from transformers.utils.quantization_config import CompressedTensorsConfig

    _, inputs = checkpoint
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(outputs[scheme]), quantization_config=CompressedTensorsConfig(dequantize=True),
        dtype=torch.float32)
    state = model.state_dict()
    want = expected_weights(scheme, inputs)
    for name, x in inputs.items():
        expected = want.get(name, np.asarray(x).astype(F32))
        np.testing.assert_array_equal(state[name].to(torch.float32).numpy(), expected,
                                      err_msg=f"{scheme} {name}")
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, cu.VOCAB) and torch.isfinite(logits).all()

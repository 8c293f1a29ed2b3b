"""Checkpoints as users have them (issue 15): a config.json missing a required field, truncated or corrupt weights."""

import json
import shutil

import pytest
import torch
from transformers import LlamaConfig as HFConfig
from transformers import LlamaForCausalLM

from conftest import fixture_path
from imuspec.checkpoint import CheckpointError, load_decoder
from imuspec.cli import main

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def hf_folder(folder, shard: str = "1GB"):
    torch.manual_seed(0)
    LlamaForCausalLM(HFConfig(**TINY)).save_pretrained(folder, max_shard_size=shard)
    return folder


@pytest.mark.parametrize("field", ["hidden_size", "num_hidden_layers", "vocab_size"])
def test_a_missing_required_field_is_named(tmp_path, field):
    folder = hf_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config[field]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"{folder / 'config.json'}: field '{field}' missing"):
        load_decoder(folder)


def test_a_draft_config_missing_a_field_is_named(tmp_path):
    from test_llasa import write_full_checkpoint

    from imuspec.models.llasa import LLaSA

    folder, _, _ = write_full_checkpoint(tmp_path / "llasa")
    config = json.loads((folder / "config.json").read_text())
    del config["hidden_size"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"llasa/config.json: field 'hidden_size' missing"):
        LLaSA.from_pretrained(folder)


def _cut(path, fraction: float):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.5, 0.99])
def test_truncated_safetensors_is_one_line_naming_the_file(tmp_path, fraction, capsys):
    folder = hf_folder(tmp_path)
    _cut(folder / "model.safetensors", fraction)
    with pytest.raises(CheckpointError, match=r"model.safetensors: truncated or corrupt safetensors file"):
        load_decoder(folder)
    shutil.copy(fixture_path("llama2_tokenizer", "tokenizer.model"), folder / "tokenizer.model")
    capsys.readouterr()
    assert main(["generate", "--target", str(folder), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "truncated or corrupt" in err and "Traceback" not in err


def test_truncated_shard_names_the_shard_and_its_index(tmp_path):
    folder = hf_folder(tmp_path, shard="40KB")
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1
    _cut(shards[1], 0.5)
    with pytest.raises(CheckpointError, match=rf"{shards[1].name} \(a shard listed in model.safetensors.index.json\): "
                                              "truncated or corrupt"):
        load_decoder(folder)


def test_truncated_torch_bin_is_named(tmp_path):
    folder = hf_folder(tmp_path)
    sd = LlamaForCausalLM(HFConfig(**TINY)).state_dict()
    (folder / "model.safetensors").unlink()
    torch.save(sd, folder / "pytorch_model.bin")
    _cut(folder / "pytorch_model.bin", 0.5)
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: truncated or corrupt torch file"):
        load_decoder(folder)

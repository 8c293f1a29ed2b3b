"""Hugging Face checkpoint folders load as they are; bad ones fail naming the key and both shapes."""

import json
import os

import pytest
import torch

from conftest import hf_pair
from imuspec import CheckpointError, load_decoder

IDS = torch.tensor([[1, 5, 9, 33, 2, 70]])


def logits_of(folder) -> torch.Tensor:
    m = load_decoder(folder)
    m.setup_cache(8)
    with torch.no_grad():
        return m(ids=IDS)


def save_bin(state: dict, folder, shards: int = 1) -> None:
    """The legacy PyTorch layout: pytorch_model.bin, or shards with pytorch_model.bin.index.json."""
    keys = sorted(state)
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return
    weight_map = {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k] for k in keys[i::shards]}
        torch.save(part, folder / name)
        weight_map.update({k: name for k in part})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("layout", ["safetensors", "sharded_safetensors", "bin", "sharded_bin"])
@pytest.mark.parametrize("name", ["gqa", "tied", "llama3"])
def test_layouts_load_and_match_hf(tmp_path, name, layout):
    hf, _ = hf_pair(name)
    if layout.endswith("safetensors"):
        hf.save_pretrained(tmp_path, max_shard_size="40KB" if layout.startswith("sharded") else "1GB")
    else:
        hf.config.save_pretrained(tmp_path)
        state = {k: v for k, v in hf.state_dict().items() if not (hf.config.tie_word_embeddings and k == "lm_head.weight")}
        save_bin(state, tmp_path, shards=3 if layout.startswith("sharded") else 1)
    files = os.listdir(tmp_path)
    assert layout != "sharded_safetensors" or "model.safetensors.index.json" in files
    with torch.no_grad():
        ref = hf(IDS).logits
    assert (logits_of(tmp_path) - ref).abs().max() < 1e-4


@pytest.fixture
def saved(tmp_path):
    hf, _ = hf_pair("gqa")
    hf.config.save_pretrained(tmp_path)
    return tmp_path, dict(hf.state_dict())


def test_missing_key_is_named(saved):
    folder, sd = saved
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_bin(sd, folder)
    with pytest.raises(CheckpointError, match=r"missing key 'model.layers.1.mlp.up_proj.weight' \(expected shape \(64, 32\)\)"):
        load_decoder(folder)


def test_unexpected_key_is_named(saved):
    folder, sd = saved
    sd["model.layers.0.self_attn.rotary.weight"] = torch.zeros(3)
    save_bin(sd, folder)
    with pytest.raises(CheckpointError, match=r"unexpected key 'model.layers.0.self_attn.rotary.weight' \(shape \(3,\)\)"):
        load_decoder(folder)


def test_misshaped_key_names_both_shapes(saved):
    folder, sd = saved
    sd["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(32, 32)
    save_bin(sd, folder)
    with pytest.raises(CheckpointError, match=r"'model.layers.0.self_attn.k_proj.weight' has shape \(32, 32\), expected \(16, 32\)"):
        load_decoder(folder)


class Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_runs_code_is_refused(saved, monkeypatch):
    folder, sd = saved
    monkeypatch.chdir(folder)
    torch.save({**sd, "evil": Boom()}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_decoder(folder)
    assert not (folder / "pwned").exists()


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text('{"vocab_size": 8, "hidden_size": 8, "intermediate_size": 16, '
                                          '"num_hidden_layers": 1, "num_attention_heads": 2}')
    with pytest.raises(CheckpointError, match="no weights found"):
        load_decoder(tmp_path)
    with pytest.raises(CheckpointError, match="config.json: file not found"):
        load_decoder(tmp_path / "nowhere")

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM

from conftest import assert_lossless, fixture_path
from imuspec import Decoder, LlamaConfig
from imuspec.checkpoint import CheckpointError
from imuspec.models.llasa import LLaSA
from limu_reference import limu_hidden

SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions.")
QUERY = "What is the person doing?"
HF_KW = dict(vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def _limu_sd():
    return torch.load(fixture_path("limu_bert", "pretrain_base_motion_20_120.pt"), map_location="cpu", weights_only=True)


def _projector_sd(seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"model.mm_projector.0.weight": torch.randn(32, 72, generator=g) * 0.1,
            "model.mm_projector.0.bias": torch.randn(32, generator=g) * 0.1,
            "model.mm_projector.2.weight": torch.randn(32, 32, generator=g) * 0.1,
            "model.mm_projector.2.bias": torch.randn(32, generator=g) * 0.1}


def _llava_config(hf: LlamaForCausalLM) -> dict:
    return {**hf.config.to_dict(), "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"],
            "mm_hidden_size": 72, "mm_projector_type": "mlp2x_gelu", "mm_vision_tower": "limu_bert",
            "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "hidden_act": "silu"}


def _tokenizer_into(folder):
    (folder / "tokenizer.model").symlink_to(fixture_path("llama2_tokenizer", "tokenizer.model"))


def _window():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 6)).astype(np.float32) * 0.3
    x[:, 2] += 1.0  # gravity on z after /9.8
    return x


@pytest.fixture(scope="module")
def hf_tok():
    return AutoTokenizer.from_pretrained(str(fixture_path("llama2_tokenizer", "tokenizer.model").parent))


def _reference_logits(hf, tok, proj, x):
    """Independent path: the llava_v1 prompt built by hand, HF tokenizer, functional LIMU-BERT + projector, HF Llama."""
    before, after = f"{SYSTEM} USER: ", f"\n{QUERY} ASSISTANT:"
    ids_a = [1] + tok(before, add_special_tokens=False).input_ids
    ids_b = tok(after, add_special_tokens=False).input_ids
    h = limu_hidden(_limu_sd(), torch.tensor(x)[None])[0]
    feats = F.linear(F.gelu(F.linear(h, proj["model.mm_projector.0.weight"], proj["model.mm_projector.0.bias"])),
                     proj["model.mm_projector.2.weight"], proj["model.mm_projector.2.bias"])
    emb = hf.get_input_embeddings()
    embeds = torch.cat([emb(torch.tensor(ids_a)), feats, emb(torch.tensor(ids_b))])
    with torch.no_grad():
        return hf(inputs_embeds=embeds[None]).logits[0], embeds


def _ours_logits(model: LLaSA, x):
    emb = model.prompt_embeds(QUERY, x)
    model.decoder.setup_cache(len(emb) + 4)
    with torch.no_grad():
        return model.decoder(embeds=emb[None])[0], emb


def _hf_model(vocab_size: int = HF_KW["vocab_size"]):
    torch.manual_seed(0)
    return LlamaForCausalLM(HFLlamaConfig(**{**HF_KW, "vocab_size": vocab_size})).eval()


@pytest.fixture
def hf_model():
    return _hf_model()


def write_full_checkpoint(folder, vocab_size: int = HF_KW["vocab_size"], **config):
    """A full (non-LoRA) LLaSA folder as LLaVA saves it, LIMU-BERT included as the tower
    (LLaSA's tower is nn.Sequential(LIMU-BERT transformer): model.vision_tower.vision_tower.0.*); ``config`` adds
    config.json fields (``limu_bert`` makes it a project-trained draft)."""
    folder.mkdir(parents=True, exist_ok=True)
    hf, proj = _hf_model(vocab_size), _projector_sd()
    tower = {"model.vision_tower.vision_tower.0." + k[len("transformer."):]: v
             for k, v in _limu_sd().items() if k.startswith("transformer.")}
    torch.save({**hf.state_dict(), **proj, **tower}, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({**_llava_config(hf), **config}))
    _tokenizer_into(folder)
    return folder, hf, proj


@pytest.fixture(scope="module")
def full_checkpoint(tmp_path_factory):
    return write_full_checkpoint(tmp_path_factory.mktemp("llasa"))


@pytest.mark.parametrize("separate_encoder_file", [False, True])
def test_full_checkpoint_matches_transformers(full_checkpoint, hf_tok, separate_encoder_file):
    folder, hf, proj = full_checkpoint
    imu = fixture_path("limu_bert", "pretrain_base_motion_20_120.pt") if separate_encoder_file else None
    model = LLaSA.from_pretrained(folder, imu_encoder=imu)
    x = _window()
    ours, emb = _ours_logits(model, x)
    ref, ref_emb = _reference_logits(hf, hf_tok, proj, x)
    assert emb.shape == ref_emb.shape  # the 120 IMU tokens replace <image>
    torch.testing.assert_close(emb, ref_emb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_lora_run_merges_like_peft(tmp_path, hf_model, hf_tok):
    peft = pytest.importorskip("peft")
    base, run = tmp_path / "vicuna", tmp_path / "llasa-lora"
    hf_model.save_pretrained(base)
    _tokenizer_into(base)
    torch.manual_seed(1)
    lora_cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], lora_dropout=0.0,
                               init_lora_weights=False)  # random B, so the merge is visible
    pm = peft.get_peft_model(LlamaForCausalLM.from_pretrained(base), lora_cfg)
    pm.save_pretrained(run)
    from safetensors.torch import load_file

    # LLaVA-era peft wrote adapter_model.bin; keep that format
    torch.save(load_file(run / "adapter_model.safetensors"), run / "adapter_model.bin")
    (run / "adapter_model.safetensors").unlink()
    proj = _projector_sd()
    torch.save({"base_model.model." + k: v for k, v in proj.items()}, run / "non_lora_trainables.bin")
    (run / "config.json").write_text(json.dumps(_llava_config(hf_model)))
    merged = pm.merge_and_unload().eval()

    with pytest.raises(CheckpointError, match="pass base="):
        LLaSA.from_pretrained(run)
    model = LLaSA.from_pretrained(run, base=base, imu_encoder=fixture_path("limu_bert", "pretrain_base_motion_20_120.pt"))
    x = _window()
    ours, _ = _ours_logits(model, x)
    ref, _ = _reference_logits(merged, hf_tok, proj, x)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    plain, _ = _reference_logits(hf_model, hf_tok, proj, x)
    assert not torch.allclose(ours, plain, atol=1e-3)  # the adapter did change the weights


def test_bad_checkpoints(tmp_path, hf_model):
    torch.save({**hf_model.state_dict(), **_projector_sd()}, tmp_path / "pytorch_model.bin")
    cfg = _llava_config(hf_model)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"no LIMU-BERT weights \(model.vision_tower.vision_tower.0.\* keys\)"):
        LLaSA.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "mm_hidden_size": 1024}))
    with pytest.raises(CheckpointError, match="mm_hidden_size 1024; expected 72"):
        LLaSA.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    sd = {**hf_model.state_dict(), **_projector_sd()}
    del sd["model.mm_projector.2.bias"]
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"mm_projector\): missing key '2.bias'"):
        LLaSA.from_pretrained(tmp_path, imu_encoder=fixture_path("limu_bert", "pretrain_base_motion_20_120.pt"))


def test_llasa_drafts_for_a_text_target(full_checkpoint):
    """Greedy speculative decoding with the LLaSA draft gives exactly the text-only target's own output."""
    from imuspec.imu.readers import read_sensorcaps_jsonl

    draft = LLaSA.from_pretrained(full_checkpoint[0])
    rec = read_sensorcaps_jsonl(fixture_path("llasa", "sensorcaps_untrained_10hz.jsonl"))[20]
    draft_prompt = draft.prompt_embeds(QUERY, rec)
    torch.manual_seed(5)
    target = Decoder(LlamaConfig(**HF_KW)).eval()
    target_prompt = torch.tensor(draft.tokenizer.encode(f"{SYSTEM} USER: {QUERY} ASSISTANT:"))
    stats = assert_lossless(target, target_prompt, draft.decoder, draft_prompt)
    assert sum(stats.drafted_per_step) > 0  # it really ran draft/verify steps

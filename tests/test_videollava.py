"""Video-LLaVA: a tiny VideoLlavaForConditionalGeneration saved by transformers loads (hub and in-memory key layouts),
its logits equal transformers' own forward, a text draft in front changes nothing, and a real video goes through."""

import json
import shutil

import pytest
import torch
from conftest import assert_lossless, fixture_path
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionConfig, VideoLlavaConfig, VideoLlavaForConditionalGeneration
from transformers import LlamaConfig as HFLlamaConfig

from imuspec import CheckpointError, Decoder, LlamaConfig
from imuspec.models.videollava import VideoLLaVA
from imuspec.multimodal import PLACEHOLDER_ID

VOCAB = 32002  # LLaMA-2's 32,000 + <image>, <video>
TINY_LM = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
TINY_CLIP = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=28,
                 patch_size=14, projection_dim=8)  # 5 tokens a frame, 40 for 8 frames
QUERY = "Why is this video funny?"


def tiny_checkpoint(folder):
    """A random tiny VideoLlavaForConditionalGeneration saved as transformers saves it, with the LLaMA-2 tokenizer."""
    torch.manual_seed(0)
    cfg = VideoLlavaConfig(vision_config=CLIPVisionConfig(**TINY_CLIP).to_dict(),
                           text_config=HFLlamaConfig(**TINY_LM).to_dict(), image_token_index=32000,
                           video_token_index=32001, video_seq_length=40)
    hf = VideoLlavaForConditionalGeneration(cfg).eval()
    hf.save_pretrained(folder)
    shutil.copy(fixture_path("llama2_tokenizer", "tokenizer.model"), folder / "tokenizer.model")
    return folder, hf


@pytest.fixture(scope="module")
def hf_ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("videollava"))


def relayout(src, dst, rename):
    """A copy of checkpoint ``src`` with every key passed through ``rename``."""
    dst.mkdir()
    for name in ("config.json", "tokenizer.model"):
        shutil.copy(src / name, dst / name)
    save_file({rename(k): v for k, v in load_file(src / "model.safetensors").items()}, dst / "model.safetensors")
    return dst


def our_logits(m, pixels):
    emb = m.prompt_embeds(QUERY, pixels)
    m.decoder.setup_cache(len(emb) + 4)
    with torch.no_grad():
        return m.decoder(embeds=emb[None])[0]


def test_saved_layout_is_the_hubs(hf_ckpt):
    keys = load_file(hf_ckpt[0] / "model.safetensors").keys()
    assert "language_model.model.layers.0.self_attn.q_proj.weight" in keys and "language_model.lm_head.weight" in keys
    assert "multi_modal_projector.linear_1.weight" in keys and any(k.startswith("video_tower.") for k in keys)


def test_logits_match_transformers(hf_ckpt, tmp_path):
    folder, hf = hf_ckpt
    m = VideoLLaVA.from_pretrained(folder)
    pixels = torch.randn(8, 3, 28, 28)
    ids = m.prompt_ids(QUERY)
    k = ids.index(PLACEHOLDER_ID)
    hf_ids = ids[:k] + [32001] * 40 + ids[k + 1:]  # what VideoLlavaProcessor makes of "<video>" at this size
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor([hf_ids]), pixel_values_videos=pixels[None]).logits[0]
    ours = our_logits(m, pixels)
    assert ours.shape == ref.shape and (ours - ref).abs().max() < 1e-4
    # the hub's tower keys carry the transformers-4 "vision_model." prefix; transformers 5 keeps all under "model."
    hub = relayout(folder, tmp_path / "hub", lambda k: k.replace("video_tower.", "video_tower.vision_model.", 1))
    in_memory = relayout(folder, tmp_path / "mem", lambda k: k.replace("language_model.lm_head.", "lm_head.")
                         .replace("language_model.model.", "model.language_model.")
                         .replace("video_tower.", "model.video_tower.").replace("image_tower.", "model.image_tower.")
                         .replace("multi_modal_projector.", "model.multi_modal_projector."))
    for f in (hub, in_memory):
        assert torch.equal(our_logits(VideoLLaVA.from_pretrained(f), pixels), ours)


def test_prompt_is_llava_v1_with_the_video_first(hf_ckpt):
    m = VideoLLaVA.from_pretrained(hf_ckpt[0])
    ids = m.prompt_ids(QUERY)
    k = ids.index(PLACEHOLDER_ID)
    hf = m.tokenizer.hf
    assert ids[0] == 1 and hf.decode(ids[1:k]).endswith("the human's questions. USER: ")
    assert hf.decode(ids[k + 1:]) == f"\n{QUERY} ASSISTANT:"
    assert m.prompt_embeds(QUERY, torch.randn(8, 3, 28, 28)).shape == (len(ids) - 1 + 40, 32)


def test_speculative_with_text_draft_gives_target_output(hf_ckpt):
    m = VideoLLaVA.from_pretrained(hf_ckpt[0])
    emb = m.prompt_embeds(QUERY, torch.randn(8, 3, 28, 28))
    text = torch.tensor(m.tokenizer.encode(f"USER: {QUERY} ASSISTANT:"))
    torch.manual_seed(1)
    random_draft = Decoder(LlamaConfig(**TINY_LM)).eval()
    same_lm = Decoder(LlamaConfig(**TINY_LM)).eval()
    same_lm.load_state_dict(m.decoder.state_dict())
    for draft in (random_draft, same_lm):
        assert_lossless(m.decoder, emb, draft, text, max_new_tokens=20, gamma=4)


def test_real_video_file_goes_through(hf_ckpt):
    m = VideoLLaVA.from_pretrained(hf_ckpt[0])
    path = fixture_path("videos", "sample_demo_3.mp4")
    pixels = m.video_pixels(path)
    assert pixels.shape == (8, 3, 28, 28)  # the tower's resolution: 224 for the real checkpoint
    assert torch.equal(m.prompt_embeds(QUERY, path), m.prompt_embeds(QUERY, pixels))


def test_bad_inputs(hf_ckpt, tmp_path):
    folder, _ = hf_ckpt
    m = VideoLLaVA.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"video frames have shape \(8, 3, 224, 224\), expected \[frames, 3, 28, 28\]"):
        m.prompt_embeds(QUERY, torch.randn(8, 3, 224, 224))
    with pytest.raises(FileNotFoundError, match="no such video file"):
        m.prompt_embeds(QUERY, tmp_path / "absent.mp4")
    drop = {"multi_modal_projector.linear_2.bias": r"multi_modal_projector\.\*\): missing key 'linear_2\.bias'",
            "language_model.model.layers.1.mlp.up_proj.weight": r"missing key 'model\.layers\.1\.mlp\.up_proj\.weight'",
            "video_tower.encoder.layers.2.mlp.fc1.weight": r"video_tower\.\*\): missing key 'encoder\.layers\.2\.mlp\.fc1\.weight'"}
    for i, (key, msg) in enumerate(drop.items()):
        f = relayout(folder, tmp_path / f"drop{i}", lambda k: k)
        save_file({k: v for k, v in load_file(f / "model.safetensors").items() if k != key}, f / "model.safetensors")
        with pytest.raises(CheckpointError, match=msg):
            VideoLLaVA.from_pretrained(f)
    f = relayout(folder, tmp_path / "llava", lambda k: k)
    (f / "config.json").write_text(json.dumps({**json.loads((f / "config.json").read_text()), "model_type": "llava"}))
    with pytest.raises(CheckpointError, match="model_type is 'llava', expected 'video_llava'"):
        VideoLLaVA.from_pretrained(f)

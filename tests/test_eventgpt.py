"""EventGPT: a tiny checkpoint in the original key layout loads, its logits equal an independent composition of
transformers' CLIPVisionModel + torch layers + LlamaForCausalLM, and a text draft in front changes nothing."""

import json
import shutil

import pytest
import torch
from conftest import assert_lossless, fixture_path
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel, LlamaForCausalLM
from transformers import LlamaConfig as HFLlamaConfig

from imuspec import CheckpointError, Decoder, LlamaConfig
from imuspec.models.eventgpt import EventGPT

VOCAB = 32003  # LLaMA-2's 32,000 + <ev_patch>, <ev_start>, <ev_end>
TINY_LM = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
TINY_CLIP = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28,
                 patch_size=14, projection_dim=8)  # 4 patches + CLS = 5 tokens a frame
QUERY = "What is happening in the scene?"


def parts(seed=0):
    torch.manual_seed(seed)
    lm = LlamaForCausalLM(HFLlamaConfig(**TINY_LM)).eval()
    clip = CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP)).eval()
    proj = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32))
    adaptor = nn.Linear(32, 32)
    return lm, clip, proj, adaptor


def original_state_dict(lm, clip, proj, adaptor) -> dict:
    """The keys EventChatModel.save_pretrained writes (transformers 4.37: the tower under ``vision_model.``)."""
    sd = dict(lm.state_dict())
    sd.update({"model.visual_tower.visual_tower.vision_model." + k: v for k, v in clip.state_dict().items()})
    sd.update({"model.visual_projector." + k: v for k, v in proj.state_dict().items()})
    sd.update({"model.feature_adaptor." + k: v for k, v in adaptor.state_dict().items()})
    return sd


def write_checkpoint(folder, sd, lm, **config):
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, folder / "model.safetensors")
    cfg = {**lm.config.to_dict(), "model_type": "EventChat_llama", "architectures": ["EventChatModel"],
           "event_feature_adaptor": True, "mm_use_im_start_end": True, **config}
    (folder / "config.json").write_text(json.dumps(cfg))
    shutil.copy(fixture_path("llama2_tokenizer", "tokenizer.model"), folder / "tokenizer.model")
    return folder


@pytest.fixture
def ckpt(tmp_path):
    lm, clip, proj, adaptor = parts()
    tower = tmp_path / "clip"
    clip.config.save_pretrained(tower)  # shape only: the weights are in the checkpoint
    folder = write_checkpoint(tmp_path / "eventgpt", original_state_dict(lm, clip, proj, adaptor), lm,
                              mm_visual_tower=str(tower))
    return folder, (lm, clip, proj, adaptor)


def reference_logits(lm, clip, proj, adaptor, ids, pixels):
    """EventGPT's forward written out: frames one at a time, pooled, spliced at the placeholder."""
    with torch.no_grad():
        per_frame = [adaptor(proj(clip(pixels[i:i + 1]).last_hidden_state[0])) for i in range(len(pixels))]
        temporal = torch.stack([f.mean(0) for f in per_frame])
        spatial = sum(per_frame) / len(per_frame)
        k = ids.index(-200)
        emb = lm.model.embed_tokens
        x = torch.cat([emb(torch.tensor(ids[:k])), temporal, spatial, emb(torch.tensor(ids[k + 1:]))])
        return lm(inputs_embeds=x[None]).logits[0]


def test_prompt_tokens_follow_the_original(ckpt):
    m = EventGPT.from_pretrained(ckpt[0])
    ids = m.prompt_ids(QUERY)
    k = ids.index(-200)
    assert ids[0] == 1 and ids[k - 1] == 32001 and ids[k + 1] == 32002  # <ev_start>, <ev_end> after <ev_patch>
    hf = m.tokenizer.hf
    assert hf.decode(ids[1:k - 1]).endswith("questions. USER: ") and hf.decode(ids[k + 2:]) == f"\n{QUERY} ASSISTANT:"
    assert ids[k - 2] == ids[k + 2] == 29871 and ids[k + 3] == 13  # legacy sentencepiece: "▁" before each text piece
    assert m.tokenizer.vocab_size == VOCAB


def test_without_start_end_tokens_the_tags_are_text(ckpt, tmp_path):
    folder = ckpt[0]
    plain = tmp_path / "plain"
    shutil.copytree(folder, plain)
    cfg = json.loads((plain / "config.json").read_text())
    (plain / "config.json").write_text(json.dumps({**cfg, "mm_use_im_start_end": False}))
    m = EventGPT.from_pretrained(plain)
    ids = m.prompt_ids(QUERY)
    k = ids.index(-200)
    assert max(ids) < 32000 and m.tokenizer.hf.decode(ids[1:k]).endswith("USER: <ev_start>")
    assert m.tokenizer.hf.decode(ids[k + 1:]) == f"<ev_end>\n{QUERY} ASSISTANT:"


def test_logits_match_independent_reference(ckpt):
    folder, (lm, clip, proj, adaptor) = ckpt
    m = EventGPT.from_pretrained(folder)
    pixels = torch.randn(5, 3, 28, 28)
    emb = m.prompt_embeds(QUERY, pixels)
    ids = m.prompt_ids(QUERY)
    assert emb.shape == (len(ids) - 1 + 5 + 5, 32)  # 5 temporal + 5 spatial tokens at this size (582 at full size)
    m.decoder.setup_cache(len(emb) + 4)
    with torch.no_grad():
        ours = m.decoder(embeds=emb[None])[0]
    ref = reference_logits(lm, clip, proj, adaptor, ids, pixels)
    assert (ours - ref).abs().max() < 1e-4


def test_speculative_with_text_draft_gives_target_output(ckpt):
    m = EventGPT.from_pretrained(ckpt[0])
    emb = m.prompt_embeds(QUERY, torch.randn(5, 3, 28, 28))
    text = torch.tensor(m.tokenizer.encode(f"USER: {QUERY} ASSISTANT:"))
    torch.manual_seed(1)
    random_draft = Decoder(LlamaConfig(**TINY_LM)).eval()
    same_lm = Decoder(LlamaConfig(**TINY_LM)).eval()  # the target's own LM, without the events: partial agreement
    same_lm.load_state_dict(m.decoder.state_dict())
    for draft in (random_draft, same_lm):
        assert_lossless(m.decoder, emb, draft, text, max_new_tokens=20)


def test_tower_from_its_folder_and_override(tmp_path):
    """Without tower keys in the checkpoint the weights come from the CLIP folder (a full CLIPModel here, whose text
    half is ignored); ``visual_tower=`` overrides a config path that does not exist on this machine."""
    lm, clip, proj, adaptor = parts()
    full = CLIPModel(CLIPConfig(vision_config=TINY_CLIP, text_config=dict(hidden_size=16, intermediate_size=32,
                                                                          num_hidden_layers=1, num_attention_heads=2)))
    full.vision_model.load_state_dict(clip.state_dict())
    full.save_pretrained(tmp_path / "clip_full")
    sd = {k: v for k, v in original_state_dict(lm, clip, proj, adaptor).items() if "visual_tower" not in k}
    folder = write_checkpoint(tmp_path / "eventgpt", sd, lm, mm_visual_tower="/nonexistent/clip-vit-large-patch14-336")
    with pytest.raises(CheckpointError, match="is not a local folder to take its weights from"):
        EventGPT.from_pretrained(folder)
    m = EventGPT.from_pretrained(folder, visual_tower=tmp_path / "clip_full")
    pixels = torch.randn(5, 3, 28, 28)
    with torch.no_grad():
        assert torch.allclose(m.encoder.visual_tower(pixels).last_hidden_state, clip(pixels).last_hidden_state)


def test_bad_inputs(ckpt, tmp_path):
    folder = ckpt[0]
    m = EventGPT.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"event frames have shape \(5, 3, 32, 32\), expected \[frames, 3, 28, 28\]"):
        m.prompt_embeds(QUERY, torch.randn(5, 3, 32, 32))
    with pytest.raises(ValueError, match=r"expected \[frames, 3, 28, 28\]"):
        m.prompt_embeds(QUERY, torch.randn(3, 28, 28))
    nan = torch.randn(5, 3, 28, 28)
    nan[2, 1, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        m.prompt_embeds(QUERY, nan)

    sd = load_file(folder / "model.safetensors")
    cfg = json.loads((folder / "config.json").read_text())

    def broken(name, drop=(), **change):
        f = tmp_path / name
        f.mkdir()
        shutil.copy(folder / "tokenizer.model", f)
        save_file({k: v for k, v in sd.items() if k not in drop}, f / "model.safetensors")
        (f / "config.json").write_text(json.dumps({**cfg, **change}))
        return f

    with pytest.raises(CheckpointError, match=r"model\.feature_adaptor\.\*\): missing key 'weight'"):
        EventGPT.from_pretrained(broken("a", drop=["model.feature_adaptor.weight"]))
    with pytest.raises(CheckpointError, match=r"missing key 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        EventGPT.from_pretrained(broken("b", drop=["model.layers.1.mlp.up_proj.weight"]))
    with pytest.raises(CheckpointError, match=r"visual_tower\.visual_tower\.\*\): missing key 'encoder\.layers\.1\.mlp\.fc1\.bias'"):
        EventGPT.from_pretrained(broken("c", drop=["model.visual_tower.visual_tower.vision_model.encoder.layers.1.mlp.fc1.bias"]))
    # the tower folder says 24 wide, the checkpoint's tower is 16 wide: every mis-shaped key is named
    CLIPVisionConfig(**{**TINY_CLIP, "hidden_size": 24}).save_pretrained(tmp_path / "wide_clip")
    with pytest.raises(CheckpointError, match=r"key 'embeddings\.class_embedding' has shape \(16,\), expected \(24,\)"):
        EventGPT.from_pretrained(broken("d"), visual_tower=tmp_path / "wide_clip")
    with pytest.raises(CheckpointError, match="model_type is 'llava_llama', expected 'EventChat_llama'"):
        EventGPT.from_pretrained(broken("e", model_type="llava_llama"))
    with pytest.raises(CheckpointError, match=r"<ev_start> and <ev_end> get ids \[32001, 32002\], but the embedding table has 32000 rows"):
        EventGPT.from_pretrained(broken("f", vocab_size=32000))
    with pytest.raises(CheckpointError, match="no model.visual_tower.visual_tower.* keys, and the vision tower"):
        EventGPT.from_pretrained(broken("g", drop=[k for k in sd if "visual_tower" in k],
                                        mm_visual_tower="openai/clip-vit-large-patch14-336"))
    with pytest.raises(CheckpointError, match="'/nowhere/clip': no config.json there, and not a known tower"):
        EventGPT.from_pretrained(broken("h", mm_visual_tower="/nowhere/clip"))


def checkpoint_336(tmp_path):
    """A tiny EventGPT whose tower takes real 336 px frames in 3×3 patches of 112 (5 + 10 event tokens)."""
    torch.manual_seed(0)
    lm = LlamaForCausalLM(HFLlamaConfig(**TINY_LM)).eval()
    clip = CLIPVisionModel(CLIPVisionConfig(**{**TINY_CLIP, "image_size": 336, "patch_size": 112})).eval()
    proj, adaptor = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32)), nn.Linear(32, 32)
    clip.config.save_pretrained(tmp_path / "clip")
    folder = write_checkpoint(tmp_path / "eventgpt", original_state_dict(lm, clip, proj, adaptor), lm,
                              mm_visual_tower=str(tmp_path / "clip"))
    return folder, (lm, clip, proj, adaptor)


def test_real_event_file_end_to_end(tmp_path):
    """fixtures/eventgpt/sample1.npy → imuspec.events' five CLIP-processed frames → a tiny EventGPT whose tower takes
    336 px in 3×3 patches of 112: 5 temporal + 10 spatial tokens; logits equal the independent reference."""
    from imuspec.events import eventgpt_pixel_values, read_events

    folder, (lm, clip, proj, adaptor) = checkpoint_336(tmp_path)
    m = EventGPT.from_pretrained(folder)
    pixels = eventgpt_pixel_values(read_events(fixture_path("eventgpt", "sample1.npy")))
    assert pixels.shape == (5, 3, 336, 336)
    emb = m.prompt_embeds(QUERY, pixels)
    ids = m.prompt_ids(QUERY)
    assert emb.shape == (len(ids) - 1 + 5 + 10, 32)
    m.decoder.setup_cache(len(emb))
    with torch.no_grad():
        ours = m.decoder(embeds=emb[None])[0]
    assert (ours - reference_logits(lm, clip, proj, adaptor, ids, pixels)).abs().max() < 1e-4

"""OneLLM's IMU draft against a functional re-implementation of csuhan/OneLLM's forward on the original key layout."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_lossless, fixture_path
from imuspec import CheckpointError, Decoder
from imuspec.model import first_layers
from imuspec.encoders.onellm_imu import OneLLMIMUConfig, OneLLMIMUEncoder
from imuspec.imu import IMUError, from_array, read_imu
from imuspec.imu.preprocess import onellm_input
from imuspec.models.onellm import (PARAMS, OneLLM, OneLLMConfig, hf_to_meta_rope, meta_to_hf_rope, read_config,
                                   swiglu_hidden)
from imuspec.templates import Tokenizer, get_template

IMU = OneLLMIMUConfig(width=32, clip_layers=2, clip_heads=4, expert_layers=2, expert_heads=4, multiple_of=16, out_dim=48)
CFG = OneLLMConfig(dim=48, n_layers=2, n_heads=4, multiple_of=16, max_seq_len=256, imu=IMU)


def ffn_dim(dim, multiple_of):
    h = int(2 * 4 * dim / 3)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


def original_checkpoint(seed=0):
    """Random tensors under OneLLM's own key names and shapes (MetaModel.llma), other modalities included."""
    g = torch.Generator().manual_seed(seed)
    w, d, v = IMU.width, CFG.dim, CFG.vocab_size
    shapes = {"llma.tok_embeddings.weight": (v, d), "llma.norm.weight": (d,), "llma.output.weight": (v, d)}
    f = ffn_dim(d, CFG.multiple_of)
    for i in range(CFG.n_layers):
        p = f"llma.layers.{i}."
        shapes |= {p + f"attention.w{n}.weight": (d, d) for n in "qkvo"}
        shapes |= {p + "feed_forward.w1.weight": (f, d), p + "feed_forward.w2.weight": (d, f),
                   p + "feed_forward.w3.weight": (f, d), p + "attention_norm.weight": (d,), p + "ffn_norm.weight": (d,)}
    vis = "llma.clip.visual."
    shapes |= {vis + "class_embedding": (w,), vis + "positional_embedding": (257, w), vis + "conv1.weight": (w, 3, 14, 14),
               vis + "ln_pre.weight": (w,), vis + "ln_pre.bias": (w,), vis + "ln_post.weight": (w,),
               vis + "ln_post.bias": (w,), vis + "proj": (w, 24), "llma.clip.token_embedding.weight": (50, 24)}
    for j in range(IMU.clip_layers):
        p = f"{vis}transformer.resblocks.{j}."
        shapes |= {p + "ln_1.weight": (w,), p + "ln_1.bias": (w,), p + "attn.in_proj_weight": (3 * w, w),
                   p + "attn.in_proj_bias": (3 * w,), p + "attn.out_proj.weight": (w, w), p + "attn.out_proj.bias": (w,),
                   p + "ln_2.weight": (w,), p + "ln_2.bias": (w,), p + "mlp.c_fc.weight": (4 * w, w),
                   p + "mlp.c_fc.bias": (4 * w,), p + "mlp.c_proj.weight": (w, 4 * w), p + "mlp.c_proj.bias": (w,)}
    fe = ffn_dim(w, CFG.multiple_of)
    for e in range(3):
        for n in range(IMU.expert_layers):
            p = f"llma.resample_layers.{e}.{n}."
            shapes |= {p + f"attention.w{m}.weight": (w, w) for m in "qkvo"}
            shapes |= {p + "feed_forward.w1.weight": (fe, w), p + "feed_forward.w2.weight": (w, fe),
                       p + "feed_forward.w3.weight": (fe, w), p + "attention_norm.weight": (w,),
                       p + "ffn_norm.weight": (w,)}
    for modal in ("imu", "audio"):
        shapes |= {f"llma.conv1.{modal}.weight": (w, 6, 10) if modal == "imu" else (w, 1, 16, 16),
                   f"llma.positional_embedding.{modal}": (392, w) if modal == "imu" else (1213, w),
                   f"llma.resample_tokens.{modal}": (1, 30, w),
                   f"llma.routers.{modal}.fc1.weight": (4 * w, w), f"llma.routers.{modal}.fc1.bias": (4 * w,),
                   f"llma.routers.{modal}.fc2.weight": (3, 4 * w), f"llma.routers.{modal}.fc2.bias": (3,),
                   f"llma.clip_proj1.{modal}.0.weight": (w, w), f"llma.clip_proj1.{modal}.0.bias": (w,),
                   f"llma.clip_proj1.{modal}.1.weight": (w,), f"llma.clip_proj1.{modal}.1.bias": (w,),
                   f"llma.clip_proj2.{modal}.0.weight": (d, w), f"llma.clip_proj2.{modal}.0.bias": (d,),
                   f"llma.clip_proj2.{modal}.1.weight": (d,), f"llma.clip_proj2.{modal}.1.bias": (d,),
                   f"llma.start_tag.{modal}": (1, 1, d), f"llma.end_tag.{modal}": (1, 1, d)}
    sd = {}
    for k, s in shapes.items():
        x = torch.randn(s, generator=g)
        gain = k.endswith(("norm.weight", "ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", ".1.weight"))
        sd[k] = 1 + 0.1 * x if gain else x / math.sqrt(s[-1]) if len(s) == 2 else 0.1 * x
    return sd


# --- a functional OneLLM, written from model/LLM/onellm.py and open_clip 2.23, reading the original keys ---

def _ln(sd, p, x):
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], 1e-5)


def _rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _attend(q, k, v, heads, causal):
    t, d = q.shape
    q, k, v = (z.view(-1, heads, d // heads).transpose(0, 1) for z in (q, k, v))
    s = q @ k.transpose(1, 2) / math.sqrt(d // heads)
    if causal:
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return (s.softmax(-1) @ v).transpose(0, 1).reshape(t, d)


def _llama_block(sd, p, h, heads, rope=None):
    x = _rms(h, sd[p + "attention_norm.weight"])
    q, k, v = (x @ sd[p + f"attention.w{n}.weight"].T for n in "qkv")
    if rope is not None:  # OneLLM's apply_rotary_emb: interleaved pairs as complex numbers
        t, d = q.shape
        rot = lambda z: torch.view_as_real(torch.view_as_complex(z.view(t, heads, -1, 2)) * rope[:, None]).reshape(t, d)
        q, k = rot(q), rot(k)
    h = h + _attend(q, k, v, heads, causal=rope is not None) @ sd[p + "attention.wo.weight"].T
    x = _rms(h, sd[p + "ffn_norm.weight"])
    f = F.silu(x @ sd[p + "feed_forward.w1.weight"].T) * (x @ sd[p + "feed_forward.w3.weight"].T)
    return h + f @ sd[p + "feed_forward.w2.weight"].T


def reference_imu_tokens(sd, imu):
    w = IMU.width
    x = F.conv1d(imu[None], sd["llma.conv1.imu.weight"])[0].T
    x = torch.cat([sd["llma.clip.visual.class_embedding"][None], x]) + sd["llma.positional_embedding.imu"]
    x = _ln(sd, "llma.clip.visual.ln_pre", x)
    for j in range(IMU.clip_layers):
        p = f"llma.clip.visual.transformer.resblocks.{j}."
        h = _ln(sd, p + "ln_1", x)
        q, k, v = (h @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]).split(w, -1)
        x = x + _attend(q, k, v, IMU.clip_heads, False) @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
        h = _ln(sd, p + "ln_2", x) @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"]
        x = x + (h * torch.sigmoid(1.702 * h)) @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
    x = _ln(sd, "llma.clip.visual.ln_post", x)
    x = _ln(sd, "llma.clip_proj1.imu.1", x @ sd["llma.clip_proj1.imu.0.weight"].T + sd["llma.clip_proj1.imu.0.bias"])
    x = torch.cat([sd["llma.resample_tokens.imu"][0], x])
    r = F.gelu(x @ sd["llma.routers.imu.fc1.weight"].T + sd["llma.routers.imu.fc1.bias"])
    r = (r @ sd["llma.routers.imu.fc2.weight"].T + sd["llma.routers.imu.fc2.bias"]).sigmoid()
    r = r / r.sum(-1, keepdim=True)
    out = 0
    for e in range(3):
        h = x
        for n in range(IMU.expert_layers):
            h = _llama_block(sd, f"llma.resample_layers.{e}.{n}.", h, IMU.expert_heads)
        out = out + h[:30] * r[:30, e:e + 1]
    out = _ln(sd, "llma.clip_proj2.imu.1", out @ sd["llma.clip_proj2.imu.0.weight"].T + sd["llma.clip_proj2.imu.0.bias"])
    return torch.cat([sd["llma.start_tag.imu"][0], out, sd["llma.end_tag.imu"][0]])


def reference_logits(sd, ids, imu):
    """Transformer.forward(examples, image, modal=['imu']): BOS, start tag, IMU tokens, end tag, the rest."""
    h = sd["llma.tok_embeddings.weight"][torch.tensor(ids)]
    h = torch.cat([h[:1], reference_imu_tokens(sd, imu), h[1:]])
    hd = CFG.dim // CFG.n_heads
    freqs = torch.outer(torch.arange(len(h)).float(), 1.0 / 10000 ** (torch.arange(0, hd, 2).float() / hd))
    rope = torch.polar(torch.ones_like(freqs), freqs)
    for i in range(CFG.n_layers):
        h = _llama_block(sd, f"llma.layers.{i}.", h, CFG.n_heads, rope)
    return _rms(h, sd["llma.norm.weight"]) @ sd["llma.output.weight"].T


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    sd = original_checkpoint()
    path = tmp_path_factory.mktemp("onellm") / "consolidated.00-of-01.pth"
    torch.save(sd, path)
    return path, sd


def window(seed=0):
    return torch.from_numpy(np.random.default_rng(seed).normal(0, 3, (6, 400)).astype(np.float32))


def test_logits_equal_the_original_forward(checkpoint):
    path, sd = checkpoint
    tok_dir = fixture_path("llama2_tokenizer", "tokenizer.model").parent
    m = OneLLM.from_pretrained(path, tok_dir, CFG)
    imu, query = window(), "Describe the scene."
    emb = m.prompt_embeds(query, imu)
    ids = m.tokenizer.encode(get_template("v1").prompt(query))
    assert emb.shape == (len(ids) + 32, CFG.dim)
    m.decoder.setup_cache(len(emb))
    with torch.no_grad():
        ours = m.decoder(embeds=emb[None])[0]
        ref = reference_logits(sd, ids, imu)
    assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4), (ours - ref).abs().max()
    # the IMU tokens differ between windows: the encoder is really in the path
    assert not torch.allclose(m.prompt_embeds(query, window(1))[1:33], emb[1:33])


def test_speculative_with_the_onellm_draft_gives_the_targets_output(checkpoint):
    path, _ = checkpoint
    m = OneLLM.from_pretrained(path, fixture_path("llama2_tokenizer", "tokenizer.model").parent, CFG)
    target = Decoder(m.decoder.config).eval()  # a text-only target of the same vocabulary: the draft's LLM, no IMU
    target.load_state_dict(m.decoder.state_dict())
    query = "What is the person doing?"
    t_prompt = torch.tensor(m.tokenizer.encode(get_template("v1").prompt(query)))
    assert_lossless(target, t_prompt, m.decoder, m.prompt_embeds(query, window()))


def test_missing_keys_are_named(tmp_path):
    tok_dir = fixture_path("llama2_tokenizer", "tokenizer.model").parent
    for key in ("llma.routers.imu.fc1.weight", "llma.layers.1.attention.wk.weight",
                "llma.clip.visual.transformer.resblocks.1.attn.in_proj_weight", "llma.resample_layers.2.1.ffn_norm.weight"):
        sd = original_checkpoint()
        del sd[key]
        torch.save(sd, tmp_path / "c.pth")
        with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
            OneLLM.from_pretrained(tmp_path / "c.pth", tok_dir, CFG)
    sd = original_checkpoint()
    sd["llma.conv1.imu.weight"] = torch.zeros(IMU.width, 6, 12)
    torch.save(sd, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match=r"conv1\.weight.*\(32, 6, 12\)"):
        OneLLM.from_pretrained(tmp_path / "c.pth", tok_dir, CFG)
    with pytest.raises(CheckpointError, match="file not found"):
        OneLLM.from_pretrained(tmp_path / "absent.pth", tok_dir, CFG)


def test_encoder_rejects_bad_windows():
    enc = OneLLMIMUEncoder(IMU).eval()
    with pytest.raises(ValueError, match=r"\(B, 6, 400\), got \(1, 6, 399\)"):
        enc(torch.zeros(1, 6, 399))
    with pytest.raises(ValueError, match=r"\(B, 6, 400\), got \(1, 400, 6\)"):
        enc(torch.zeros(1, 400, 6))
    bad = torch.zeros(1, 6, 400)
    bad[0, 2, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        enc(bad)


def input_of(x, rate_hz, start=0):
    """onellm_input of raw (N, 6) samples in m/s^2 and rad/s (gravity-free test signals)."""
    return torch.from_numpy(onellm_input(from_array(x, rate_hz, gravity=False), start))


def test_window_resampling():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(450, 6))
    assert torch.equal(input_of(x, 200), torch.from_numpy(x[:400].T.astype(np.float32)))  # 200 Hz: as is
    assert torch.equal(input_of(x, 200, start=50), torch.from_numpy(x[50:].T.astype(np.float32)))
    # 50 Hz → 200 Hz: a 2 Hz sine comes out as the same sine sampled at 200 Hz (away from the edges)
    t50, t200 = np.arange(150) / 50, np.arange(400) / 200
    up = input_of(np.repeat(np.sin(2 * np.pi * 2 * t50)[:, None], 6, 1), 50)
    assert np.abs(up[0, 40:360].numpy() - np.sin(2 * np.pi * 2 * t200[40:360])).max() < 0.02
    # 800 Hz → 200 Hz: 5 Hz passes, 150 Hz (above the new Nyquist, 100 Hz) is filtered out instead of aliasing
    t800 = np.arange(1700) / 800
    x = np.sin(2 * np.pi * 5 * t800) + np.sin(2 * np.pi * 150 * t800)
    down = input_of(np.repeat(x[:, None], 6, 1), 800)[0, 40:360].numpy()
    assert np.abs(down - np.sin(2 * np.pi * 5 * t200[40:360])).max() < 0.05
    # a real 50 Hz smartwatch recording (accel in g): 2 s become 400 samples at 200 Hz, accel in m/s^2
    rec = read_imu(fixture_path("watch_imu", "watch_imu.npz"), index=0)
    w = torch.from_numpy(onellm_input(rec, start=200))
    raw = np.concatenate([rec.accel * 9.80665, rec.gyro], axis=1)
    assert w.shape == (6, 400) and torch.isfinite(w).all()
    assert np.allclose(w[:, 40:360:4].numpy().T, raw[60:140], atol=0.1 * np.abs(raw[50:150]).max())


def test_window_rejects_bad_input():
    with pytest.raises(IMUError, match=r"at 200 Hz \(1.79 s\) from sample 0; expected at least 400 \(2 s\) for a OneLLM"):
        input_of(np.zeros((90, 6)), 50)
    with pytest.raises(IMUError, match=r"expected at least 400"):
        input_of(np.zeros((450, 6)), 200, start=100)
    with pytest.raises(IMUError, match=r"shape \(400, 3\); expected \[N, 6\]"):
        input_of(np.zeros((400, 3)), 200)
    x = np.zeros((400, 6))
    x[17, 4] = np.nan
    with pytest.raises(IMUError, match="NaN"):
        input_of(x, 200)


# --- the OneLLM folder: consolidated .pth + params.json + tokenizer, written and read back ---

def tiny_onellm(folder, tokenizer: Tokenizer, vocab_size: int, dim=64, n_layers=2, seed=0, imu_span_us=None) -> OneLLM:
    """A random OneLLM of tiny sizes on ``tokenizer``, saved in ``folder`` (what a test takes for a real OneLLM)."""
    torch.manual_seed(seed)
    imu = OneLLMIMUConfig(width=32, clip_layers=2, clip_heads=4, expert_layers=2, expert_heads=4, multiple_of=16,
                          out_dim=dim)
    cfg = OneLLMConfig(dim=dim, n_layers=n_layers, n_heads=4, multiple_of=16, vocab_size=vocab_size, imu=imu,
                       imu_span_us=imu_span_us)
    enc = OneLLMIMUEncoder(imu)
    for p in (enc.clip.visual.class_embedding, enc.positional_embedding, enc.resample_tokens, enc.start_tag,
              enc.end_tag):  # zeros at construction
        p.data.normal_(0, 0.5)
    m = OneLLM(Decoder(cfg.llama()).eval(), enc.eval(), tokenizer, cfg)
    m.save_pretrained(folder)
    return m


def _logits(m: OneLLM, query="Describe the scene.", imu=None):
    emb = m.prompt_embeds(query, window() if imu is None else imu)
    m.decoder.setup_cache(len(emb))
    with torch.no_grad():
        return m.decoder(embeds=emb[None])[0]


def test_rope_order_round_trips():
    w = torch.randn(48, 20)
    assert torch.equal(hf_to_meta_rope(meta_to_hf_rope(w, 4), 4), w)
    assert torch.equal(meta_to_hf_rope(hf_to_meta_rope(w, 4), 4), w)
    assert not torch.equal(meta_to_hf_rope(w, 4), w)


def test_saved_folder_loads_back_as_it_was(checkpoint, tmp_path):
    """Original keys → ours → save_pretrained → the same tensors under the same keys, params.json with the sizes,
    the tokenizer beside them; loading the folder (no tokenizer folder given) gives the same logits; a cut LLM too."""
    path, sd = checkpoint
    m = OneLLM.from_pretrained(path, fixture_path("llama2_tokenizer", "tokenizer.model").parent, CFG)
    m.save_pretrained(tmp_path / "f")
    saved = torch.load(tmp_path / "f" / "consolidated.00-of-01.pth", weights_only=True)
    ours = {k for k in sd if not k.endswith(".audio") and ".audio." not in k and not k.startswith(
        ("llma.clip.token_embedding", "llma.clip.visual.conv1", "llma.clip.visual.proj", "llma.clip.visual.positional"))}
    assert set(saved) == ours and all(torch.equal(saved[k], sd[k]) for k in ours)
    params = json.loads((tmp_path / "f" / PARAMS).read_text())
    assert params["dim"] == 48 and params["n_layers"] == 2 and params["imu"]["width"] == 32 and "imu_span_us" not in params
    back = OneLLM.from_pretrained(tmp_path / "f")
    assert back.config.llama().intermediate_size == CFG.llama().intermediate_size
    assert torch.equal(_logits(back), _logits(m))
    first_layers(m.decoder, 1)
    m.save_pretrained(tmp_path / "cut")
    back = OneLLM.from_pretrained(tmp_path / "cut" / "consolidated.00-of-01.pth")
    assert back.config.n_layers == 1 and torch.equal(_logits(back), _logits(m))


def test_without_params_json_the_7b_defaults(checkpoint):
    path, _ = checkpoint
    assert read_config(path) == OneLLMConfig() and OneLLMConfig().llama().intermediate_size == 11008
    with pytest.raises(CheckpointError, match=r"missing key 'llma\.layers\.2\.attention\.wq\.weight'.*\(and 269 more\)"):
        OneLLM.from_pretrained(path, fixture_path("llama2_tokenizer", "tokenizer.model").parent)  # 32 layers expected


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.pop("n_heads"), "'n_heads' missing"), (lambda d: d.update(dim="64"), "'dim' is \"64\""),
    (lambda d: d.update(n_kv_heads=2), "'n_kv_heads' is not one OneLLM reads"),
    (lambda d: d.update(vocab_size=0), "'vocab_size' is 0; expected a positive integer, or -1"),
    (lambda d: d.update(norm_eps=-1e-5), "'norm_eps' is -1e-05"), (lambda d: d.update(n_layers=True), "'n_layers' is true"),
    (lambda d: d["imu"].update(width=0), "'imu.width' is 0"), (lambda d: d["imu"].update(depth=3), "'imu.depth' is not"),
    (lambda d: d.update(dim=66), "'dim' 66 is not a multiple of 'n_heads' 4"),
])
def test_bad_params_json_is_one_line_naming_file_and_field(edit, field, tmp_path):
    tiny_onellm(tmp_path, Tokenizer(fixture_path("llama2_tokenizer", "tokenizer.model").parent), 32000, n_layers=1)
    d = json.loads((tmp_path / PARAMS).read_text())
    edit(d)
    (tmp_path / PARAMS).write_text(json.dumps(d))
    with pytest.raises(CheckpointError) as e:
        OneLLM.from_pretrained(tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / PARAMS}: field ") and field in msg and "\n" not in msg, msg


def test_layouts_onellm_cannot_hold_are_refused():
    from dataclasses import replace

    from imuspec.model import LlamaConfig

    c = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=swiglu_hidden(64, 16), num_hidden_layers=1,
                    num_attention_heads=4)
    assert OneLLMConfig.from_llama(c, replace(IMU, out_dim=64)).llama().intermediate_size == c.intermediate_size
    for bad, why in ((dict(num_key_value_heads=2), "grouped-query"), (dict(intermediate_size=100), "SwiGLU size"),
                     (dict(rope_theta=5e5), "RoPE"), (dict(tie_word_embeddings=True), "tied")):
        with pytest.raises(ValueError, match=why):
            OneLLMConfig.from_llama(replace(c, **bad), replace(IMU, out_dim=64))

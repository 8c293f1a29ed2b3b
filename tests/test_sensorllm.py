"""SensorLLM draft: a tiny checkpoint in SensorLLM's layout against transformers' LlamaForCausalLM fed embeddings
spliced the way SensorLLM does it, with the Chronos features from the chronos-forecasting package."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoTokenizer
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM

from conftest import assert_lossless, fixture_path
from imuspec import CheckpointError, Decoder
from imuspec.models.sensorllm import IMU_CHANNELS, SensorLLM, SensorLLMConfig
from imuspec.templates import get_template

chronos = pytest.importorskip("chronos", reason="chronos-forecasting (test extra) is not installed")

HIDDEN = (16, 24)
CFG = SensorLLMConfig(proj_hidden=HIDDEN)
LLAMA3_HEADERS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def write_checkpoint(folder, model_type="sensorllmstage2", tags=True, drop=(), tok=None, proj_hidden=HIDDEN):
    """A SensorLLM-layout folder: HF LLaMA weights + model.ts_proj.{0,2,4}, config model_type, tokenizer with tags
    (``tok``: another tokenizer than LLaMA-2's, as SensorLLM's own LLaMA-3 one; ``proj_hidden``: ts_proj's widths,
    SensorLLM's own (2048, 3072) for a checkpoint loaded with its defaults)."""
    folder.mkdir()
    tok = tok or AutoTokenizer.from_pretrained(str(fixture_path("llama2_tokenizer", "tokenizer.model").parent))
    tok.add_tokens(LLAMA3_HEADERS + (["<ts>"] + [t for s, e, _ in IMU_CHANNELS for t in (s, e)] if tags else []),
                   special_tokens=True)
    tok.save_pretrained(str(folder))
    vocab = 8 * math.ceil(len(tok) / 8)  # SensorLLM resizes its embeddings to a multiple of 8
    torch.manual_seed(0)
    cfg = HFLlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 64})
    hf = LlamaForCausalLM(cfg).eval()
    sd = {k: v.contiguous() for k, v in hf.state_dict().items()}
    dims = (64, *proj_hidden, 32)  # chronos_dummy's d_model 64 → ... → the LLM's 32
    for i in range(3):
        sd[f"model.ts_proj.{2 * i}.weight"] = torch.randn(dims[i + 1], dims[i]) / math.sqrt(dims[i])
        sd[f"model.ts_proj.{2 * i}.bias"] = 0.1 * torch.randn(dims[i + 1])
    sd["model.pt_encoder_backbone.model.encoder.final_layer_norm.weight"] = torch.ones(64)  # a full trainer save
    for k in drop:
        del sd[k]
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({**cfg.to_dict(), "model_type": model_type}))
    return folder, hf, sd


def series(seed=0, n=40):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, n, generator=g, dtype=torch.float64) * 2 + 0.5


def reference_embeds(hf, sd, tok, query, x):
    """SensorLLM's MultiChannelTimeSeriesDatasetStage2 prompt and SensorLLMStage2LlamaModel.forward splice."""
    pipe = chronos.ChronosPipeline.from_pretrained(str(fixture_path("chronos_dummy", "config.json").parent),
                                                   dtype=torch.float32)
    emb, _ = pipe.embed(x)  # [6, L+1, 64]
    h = F.gelu(emb @ sd["model.ts_proj.0.weight"].T + sd["model.ts_proj.0.bias"])
    h = F.gelu(h @ sd["model.ts_proj.2.weight"].T + sd["model.ts_proj.2.bias"])
    feats = h @ sd["model.ts_proj.4.weight"].T + sd["model.ts_proj.4.bias"]
    n = emb.shape[1]
    added = "".join(s + "<ts>" * n + e + "\n" for s, e, _ in IMU_CHANNELS)
    text = (tok.bos_token + "<|start_header_id|>system<|end_header_id|>\n\n" + get_template("sensorllm").system
            + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n" + (added + query).strip()
            + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = torch.tensor(tok(text).input_ids)
    out = hf.model.embed_tokens(ids)
    for (s, _, _), f in zip(IMU_CHANNELS, feats):
        p = int(torch.where(ids == tok.convert_tokens_to_ids(s))[0])
        out = torch.cat([out[:p + 1], f, out[p + 1 + n:]])
    return out


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    folder, hf, sd = write_checkpoint(tmp_path_factory.mktemp("s") / "ckpt")
    m = SensorLLM.from_pretrained(folder, fixture_path("chronos_dummy", "config.json").parent, CFG)
    return m, hf, sd


def test_logits_equal_llama_fed_sensorllm_splice(family):
    m, hf, sd = family
    x, query = series(), "What activity is this?"
    emb = m.prompt_embeds(query, x)
    with torch.no_grad():
        ref = reference_embeds(hf, sd, m.tokenizer.hf, query, x)
        assert emb.shape == ref.shape
        assert torch.allclose(emb, ref, atol=1e-5)
        ref_logits = hf(inputs_embeds=ref[None]).logits[0]
        m.decoder.setup_cache(len(emb))
        logits = m.decoder(embeds=emb[None])[0]
    assert torch.allclose(logits, ref_logits, atol=1e-4, rtol=1e-4), (logits - ref_logits).abs().max()
    assert not torch.allclose(m.prompt_embeds(query, series(1)), emb)  # the series is really in the path


def test_speculative_with_the_sensorllm_draft_gives_the_targets_output(family):
    m, _, _ = family
    target = Decoder(m.decoder.config).eval()  # text-only target, same vocabulary and weights
    target.load_state_dict(m.decoder.state_dict())
    query = "What activity is this?"
    t_prompt = torch.tensor(m.tokenizer.encode(get_template("sensorllm").prompt(query)))
    assert_lossless(target, t_prompt, m.decoder, m.prompt_embeds(query, series()))


def test_template_renders_llama3_as_sensorllm_does():
    t = get_template("sensorllm")
    assert t.prompt("  Q?\n") == (
        "<|start_header_id|>system<|end_header_id|>\n\n" + t.system + "<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nQ?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_bad_checkpoints_and_inputs(family, tmp_path):
    chronos_dir = fixture_path("chronos_dummy", "config.json").parent
    folder, _, _ = write_checkpoint(tmp_path / "a", model_type="llama")
    with pytest.raises(CheckpointError, match="model_type is 'llama'"):
        SensorLLM.from_pretrained(folder, chronos_dir, CFG)
    folder, _, _ = write_checkpoint(tmp_path / "b", drop=["model.ts_proj.2.weight"])
    with pytest.raises(CheckpointError, match=r"missing key 'model\.ts_proj\.2\.weight'"):
        SensorLLM.from_pretrained(folder, chronos_dir, CFG)
    folder, _, _ = write_checkpoint(tmp_path / "c", drop=["model.layers.1.mlp.up_proj.weight"])
    with pytest.raises(CheckpointError, match=r"missing key 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        SensorLLM.from_pretrained(folder, chronos_dir, CFG)
    folder, _, _ = write_checkpoint(tmp_path / "d", tags=False)
    with pytest.raises(CheckpointError, match="no '<ts>' token"):
        SensorLLM.from_pretrained(folder, chronos_dir, CFG)
    folder, _, _ = write_checkpoint(tmp_path / "e")
    with pytest.raises(CheckpointError, match=r"ts_proj\.0\.weight.*expected \(2048, 64\)"):
        SensorLLM.from_pretrained(folder, chronos_dir, SensorLLMConfig())  # the real projector sizes
    m = family[0]
    with pytest.raises(ValueError, match=r"expected shape \[6, L\].*\(5, 40\)"):
        m.prompt_embeds("q", series()[:5])
    x = series()
    x[2, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        m.prompt_embeds("q", x)


def test_add_ts_tokens_appends_after_every_id_the_llm_has():
    """SensorLLM's resize on an LLM whose table (384 rows) is padded past its tokenizer (338 tokens): its tokens come
    after row 384 (placeholders name the padding rows), new rows are the old rows' mean, the table a multiple of 8,
    and the LLM's logits over its own ids are unchanged; a second call adds nothing."""
    from imuspec.demo import WEIGHTS
    from imuspec.families import open_target
    from imuspec.models.sensorllm import add_ts_tokens

    target = open_target(WEIGHTS / "target")
    tok, dec = target.tokenizer, target.decoder
    grown, tok2 = add_ts_tokens(dec, tok, CFG)
    vocab = tok2.hf.get_vocab()
    ids = [vocab[t] for t in CFG.tokens]
    assert ids == list(range(384, 397)) and grown.config.vocab_size == 400 and tok2.vocab_size == 397
    assert tok.vocab_size == 338 and "<ts>" not in tok.hf.get_vocab()  # the target's tokenizer is left as it was
    torch.testing.assert_close(grown.model.embed_tokens.weight[390], dec.model.embed_tokens.weight.mean(0))
    prompt = torch.tensor([tok.encode("What am I doing?")])
    for m in (dec, grown):
        m.setup_cache(16)
    torch.testing.assert_close(grown(ids=prompt)[..., :384], dec(ids=prompt), rtol=0, atol=0)
    assert add_ts_tokens(grown, tok2, CFG) == (grown, tok2)


def test_generate_with_an_original_sensorllm_draft_on_the_targets_vocabulary(tmp_path, capsys):
    """`imuspec generate --draft SENSORLLM --chronos DIR --imu FILE`: SensorLLM on LLaMA-2's vocabulary (its tags and
    LLaMA-3 headers appended) drafts directly for a LLaMA-2 target, restricted to its ids, and gives its output."""
    from test_cli import checkpoint

    from imuspec.cli import main

    folder, _, _ = write_checkpoint(tmp_path / "sensorllm", proj_hidden=(2048, 3072))
    target = checkpoint(tmp_path / "target", 0, 2)
    common = ["generate", "--target", str(target), "--prompt", "What activity is this?", "--template", "llava_v1",
              "--max-new-tokens", "12", "--json"]
    outs = []
    for extra in ([], ["--draft", str(folder), "--chronos", str(fixture_path("chronos_dummy")),
                       "--imu", str(fixture_path("llasa", "sensorcaps_untrained_10hz.jsonl")), "--imu-index", "0"]):
        assert main(common + extra) == 0
        out, err = capsys.readouterr()
        outs.append((json.loads(out)["token_ids"], err))
    assert outs[1][0] == outs[0][0] and "drafting the target's ids only" in outs[1][1]

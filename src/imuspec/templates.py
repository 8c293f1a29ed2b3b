"""Conversation templates as data, and the tokenizer of a checkpoint folder.

Templates match the originals: LLaVA's ``vicuna_v1`` / ``llava_v1`` (EventGPT's ``eventgpt_v1`` is ``llava_v1``) and
OneLLM's ``v1`` (``conv_v1_2`` in its ``conversation_lib``), and SensorLLM's LLaMA-3 chat format ``sensorllm``
(its Jinja template in ``sensorllm/data/utils.py``, with the USC-HAD stage-2 instruction). Besides these, ``chat``
is the tokenizer's own chat template (``tokenizer_config.json``), and ``plain`` the query as it is.

A prompt gets BOS in front where the checkpoint's tokenizer adds one (``add_bos_token``, else its post-processor; a
sentencepiece ``tokenizer.model`` is LLaMA's, which does), as LLaVA's ``tokenizer_image_token`` and transformers do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

_HUMAN_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

# SensorLLM's stage-2 instruction for USC-HAD, the 6-channel IMU set (sensorllm/data/stage2_dataset.py)
_SENSORLLM_SYSTEM = (
    "The assistant is provided with time-series readings of six sensor channels, including three accelerometer "
    "channels (in g) and three gyroscope channels (in dps). Each channel contains 200 data representing information "
    "extracted from the same 2-second time window at a sampling rate of 100Hz. Please analyze the trends and patterns "
    "in each channel to identify the correct activity type from the following twelve activity options:\n\n"
    "1. Walking Forward\n2. Walking Left\n3. Walking Right\n4. Walking Upstairs\n5. Walking Downstairs\n"
    "6. Running Forward\n7. Jumping\n8. Sitting\n9. Standing\n10. Sleeping\n11. Elevator Up\n12. Elevator Down\n\n"
    "Provide the predicted activity as both the number and the name at the end."
)


@dataclass(frozen=True)
class Template:
    name: str
    system: str
    roles: tuple[str, str]
    style: str  # "two": LLaVA's SeparatorStyle.TWO; "single_nl": OneLLM's SINGLE; "llama3": LLaMA-3 headers
    sep: str
    sep2: str = ""

    def render(self, turns: list[tuple[str, str | None]]) -> str:
        """The prompt for ``turns`` = [(role index 0|1, text or None)], ending with an open assistant turn."""
        if self.style == "two":
            out, seps = self.system + self.sep, (self.sep, self.sep2)
            for i, (role, msg) in enumerate(turns):
                out += f"{self.roles[role]}: {msg}{seps[i % 2]}" if msg else f"{self.roles[role]}:"
            return out
        if self.style == "llama3":  # as SensorLLM renders it: system block always present, contents stripped
            head = "<|start_header_id|>{}<|end_header_id|>\n\n".format
            out = head("system") + self.system.strip() + self.sep
            for role, msg in turns:
                out += head(self.roles[role]) + (msg.strip() + self.sep if msg else "")
            return out
        out = self.system + "\n\n" + self.sep
        for role, msg in turns:
            out += f"{self.roles[role]}: {msg}\n{self.sep}" if msg else f"{self.roles[role]}:"
        return out

    def prompt(self, query: str) -> str:
        """One user query and an empty assistant turn."""
        return self.render([(0, query), (1, None)])

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Text that ends the assistant's turn: the separator after it and the next turn's role, so a model whose
        vocabulary has no piece for the separator still stops (transformers' ``stop_strings``)."""
        if self.style == "two":
            return (self.sep2, f"{self.roles[0]}:")
        if self.style == "llama3":
            return (self.sep,)
        return (self.sep, f"{self.roles[0]}:")


TEMPLATES = {
    t.name: t
    for t in (
        Template(
            "vicuna_v1",
            "A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions.",
            ("USER", "ASSISTANT"),
            "two",
            " ",
            "</s>",
        ),
        Template("llava_v1", _HUMAN_SYSTEM, ("USER", "ASSISTANT"), "two", " ", "</s>"),
        Template("eventgpt_v1", _HUMAN_SYSTEM, ("USER", "ASSISTANT"), "two", " ", "</s>"),
        Template("v1", _HUMAN_SYSTEM, ("Human", "Assistant"), "single_nl", "###"),
        Template("sensorllm", _SENSORLLM_SYSTEM, ("user", "assistant"), "llama3", "<|eot_id|>"),
    )
}


CHAT, PLAIN = "chat", "plain"  # the tokenizer's chat template; the query as it is


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise KeyError(f"unknown template {name!r}; known templates: {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[name]


def check_template(name: str | None) -> None:
    """A name ``prompt_ids`` takes (fails early, before any loading)."""
    if name not in (None, CHAT, PLAIN) and name not in TEMPLATES:
        raise KeyError(f"unknown template {name!r}; known templates: {', '.join(sorted([*TEMPLATES, CHAT, PLAIN]))}")


def has_tokenizer(folder: str | Path) -> bool:
    """Whether ``folder`` holds a tokenizer :class:`Tokenizer` reads."""
    return any((Path(folder) / n).exists() for n in ("tokenizer.json", "tokenizer.model"))


class Tokenizer:
    """A checkpoint's tokenizer (``tokenizer.json`` or sentencepiece ``tokenizer.model``); BOS as it adds it.

    LLaMA's sentencepiece tokenizer without a ``legacy`` key in ``tokenizer_config.json`` is legacy, as in the
    transformers of the original checkpoints (4.x): text after an added token (EventGPT's ``<ev_end>``) starts with a
    word mark, ``<ev_end>\\n`` → [<ev_end>, ▁, \\n]; ``"legacy": false`` gives [<ev_end>, \\n].
    """

    def __init__(self, folder: str | Path):
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        folder = Path(folder)
        if not has_tokenizer(folder):
            raise FileNotFoundError(f"{folder}: no tokenizer.json or tokenizer.model")
        level = hf_logging.get_verbosity()  # it reads config.json and warns about a multimodal model_type it does not know
        hf_logging.set_verbosity_error()
        try:
            self.hf = AutoTokenizer.from_pretrained(str(folder))
        finally:
            hf_logging.set_verbosity(level)
        self.bos_id, self.eos_id = self.hf.bos_token_id, self.hf.eos_token_id
        self.vocab_size = len(self.hf)
        config = _config(folder)
        self.adds_bos = self.bos_id is not None and _adds_bos(folder, config, self.bos_id)
        if config.get("tokenizer_class", "").startswith("LlamaTokenizer") and config.get("legacy", True):
            from tokenizers.pre_tokenizers import Metaspace

            self.hf.backend_tokenizer.pre_tokenizer = Metaspace(replacement="▁", prepend_scheme="always", split=False)

    def encode(self, text: str, bos: bool | None = None) -> list[int]:
        """Token ids of ``text``; BOS in front where the tokenizer adds it (``bos`` overrides)."""
        ids = self.hf(text, add_special_tokens=False).input_ids
        return [self.bos_id] + ids if (self.adds_bos if bos is None else bos) else ids

    def prompt_ids(self, query: str, template: str | None = None) -> list[int]:
        """``query`` under a named template, the tokenizer's chat template (``chat``: a user turn and the generation
        prompt, as ``apply_chat_template``), or as it is (``plain``). Default: ``chat`` where the tokenizer has a
        chat template, else ``plain``."""
        if template is None:
            template = CHAT if self.hf.chat_template else PLAIN
        if template == CHAT:
            if not self.hf.chat_template:
                raise ValueError(f"{self.hf.name_or_path}: --template chat, but tokenizer_config.json has no chat_template")
            text = self.hf.apply_chat_template([{"role": "user", "content": query}], tokenize=False,
                                               add_generation_prompt=True)
            return self.encode(text, bos=False)  # the template writes any BOS itself
        return self.encode(query if template == PLAIN else get_template(template).prompt(query))

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)

    def save_pretrained(self, folder: str | Path) -> None:
        """The tokenizer's files, saying whether it adds BOS (transformers' own save drops ``add_bos_token``)."""
        self.hf.save_pretrained(str(folder))
        path = Path(folder) / "tokenizer_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "add_bos_token": self.adds_bos}, indent=2) + "\n")


@dataclass(frozen=True)
class StopStrings:
    """A :class:`~imuspec.speculative.GenerationConfig` ``stop``: the output ends before the first of ``strings`` in
    its text (a template's end of turn where the vocabulary has no token for it)."""

    tokenizer: Tokenizer
    strings: tuple[str, ...]

    def __call__(self, tokens: list[int]) -> int | None:
        text = self.tokenizer.decode(tokens)
        at = min((i for i in (text.find(s) for s in self.strings) if i >= 0), default=None)
        if at is None:
            return None
        return next(k for k in range(len(tokens)) if len(self.tokenizer.decode(tokens[:k + 1])) > at)


def _config(folder: Path) -> dict:
    path = folder / "tokenizer_config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _adds_bos(folder: Path, config: dict, bos_id: int) -> bool:
    """Whether the tokenizer puts BOS in front of a text: ``add_bos_token``, else what ``tokenizer.json``'s
    post-processor does, else yes (a sentencepiece ``tokenizer.model``: LLaMA's, whose tokenizer adds it)."""
    if "add_bos_token" in config:
        return bool(config["add_bos_token"])
    if (folder / "tokenizer.json").exists():
        from tokenizers import Tokenizer as Backend

        return Backend.from_file(str(folder / "tokenizer.json")).encode("a").ids[:1] == [bos_id]
    return True

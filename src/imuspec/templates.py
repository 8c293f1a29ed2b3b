"""Conversation templates as data, and the tokenizer of a checkpoint folder.

Templates match the originals: LLaVA's ``vicuna_v1`` / ``llava_v1`` (EventGPT's ``eventgpt_v1`` is ``llava_v1``) and
OneLLM's ``v1`` (``conv_v1_2`` in its ``conversation_lib``). All of them are encoded with BOS in front.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_HUMAN_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


@dataclass(frozen=True)
class Template:
    name: str
    system: str
    roles: tuple[str, str]
    style: str  # "two": LLaVA's SeparatorStyle.TWO; "single_nl": OneLLM's SINGLE
    sep: str
    sep2: str = ""

    def render(self, turns: list[tuple[str, str | None]]) -> str:
        """The prompt for ``turns`` = [(role index 0|1, text or None)], ending with an open assistant turn."""
        if self.style == "two":
            out, seps = self.system + self.sep, (self.sep, self.sep2)
            for i, (role, msg) in enumerate(turns):
                out += f"{self.roles[role]}: {msg}{seps[i % 2]}" if msg else f"{self.roles[role]}:"
            return out
        out = self.system + "\n\n" + self.sep
        for role, msg in turns:
            out += f"{self.roles[role]}: {msg}\n{self.sep}" if msg else f"{self.roles[role]}:"
        return out

    def prompt(self, query: str) -> str:
        """One user query and an empty assistant turn."""
        return self.render([(0, query), (1, None)])


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
    )
}


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise KeyError(f"unknown template {name!r}; known templates: {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[name]


class Tokenizer:
    """A checkpoint's tokenizer (``tokenizer.json`` or sentencepiece ``tokenizer.model``) with explicit BOS."""

    def __init__(self, folder: str | Path):
        from transformers import AutoTokenizer

        folder = Path(folder)
        if not any((folder / n).exists() for n in ("tokenizer.json", "tokenizer.model")):
            raise FileNotFoundError(f"{folder}: no tokenizer.json or tokenizer.model")
        self.hf = AutoTokenizer.from_pretrained(str(folder))
        self.bos_id, self.eos_id = self.hf.bos_token_id, self.hf.eos_token_id
        self.vocab_size = len(self.hf)

    def encode(self, text: str, bos: bool = True) -> list[int]:
        ids = self.hf(text, add_special_tokens=False).input_ids
        return [self.bos_id] + ids if bos else ids

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)

"""Conversation templates as data, and the tokenizer of a checkpoint folder.

Templates match the originals: LLaVA's ``vicuna_v1`` / ``llava_v1`` (EventGPT's ``eventgpt_v1`` is ``llava_v1``) and
OneLLM's ``v1`` (``conv_v1_2`` in its ``conversation_lib``), and SensorLLM's LLaMA-3 chat format ``sensorllm``
(its Jinja template in ``sensorllm/data/utils.py``, with the USC-HAD stage-2 instruction). All of them are encoded
with BOS in front.
"""

from __future__ import annotations

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


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise KeyError(f"unknown template {name!r}; known templates: {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[name]


class Tokenizer:
    """A checkpoint's tokenizer (``tokenizer.json`` or sentencepiece ``tokenizer.model``) with explicit BOS."""

    def __init__(self, folder: str | Path):
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        folder = Path(folder)
        if not any((folder / n).exists() for n in ("tokenizer.json", "tokenizer.model")):
            raise FileNotFoundError(f"{folder}: no tokenizer.json or tokenizer.model")
        level = hf_logging.get_verbosity()  # it reads config.json and warns about a multimodal model_type it does not know
        hf_logging.set_verbosity_error()
        try:
            self.hf = AutoTokenizer.from_pretrained(str(folder))
        finally:
            hf_logging.set_verbosity(level)
        self.bos_id, self.eos_id = self.hf.bos_token_id, self.hf.eos_token_id
        self.vocab_size = len(self.hf)

    def encode(self, text: str, bos: bool = True) -> list[int]:
        ids = self.hf(text, add_special_tokens=False).input_ids
        return [self.bos_id] + ids if bos else ids

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)

"""OneLLM (csuhan/OneLLM) as an IMU draft: LLaMA-2 with 32 IMU embeddings right after BOS, template ``v1``.

One ``consolidated.00-of-01.pth`` holds everything under ``llma.``: the IMU path (see
:mod:`imuspec.encoders.onellm_imu`) and a Meta-format LLaMA-2 (``tok_embeddings``, ``layers.N.attention.wq``, ...).
OneLLM applies RoPE to interleaved pairs (``view_as_complex``); our :class:`~imuspec.model.Decoder` rotates halves
(Hugging Face), so ``wq``/``wk`` rows are permuted on import, as transformers' ``convert_llama_weights_to_hf`` does,
and back on save.

The file holds no sizes: OneLLM reads them from ``config/llama2/7B.json``, Meta's ``params.json`` fields (``dim``,
``n_layers``, ``n_heads``, ``multiple_of``, ``norm_eps``, ``vocab_size``; -1: the tokenizer's). A ``params.json``
beside the ``.pth`` (Meta's own layout: ``consolidated.00.pth`` + ``params.json``) gives them, plus our optional
``imu`` (the IMU path's sizes where they are not OneLLM's) and ``imu_span_us`` (a distilled draft: it reads the IMU
span ending with a paired window); without one, OneLLM's 7B. :meth:`OneLLM.save_pretrained` writes that folder
(``.pth``, ``params.json``, the tokenizer), which loads back as it was.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoint import CheckpointError, build_decoder, load_weights_file, read_json
from ..encoders.onellm_imu import OneLLMIMUConfig, OneLLMIMUEncoder, checkpoint_name, load_imu_encoder
from ..imu import IMURecording
from ..imu.preprocess import onellm_input
from ..model import Decoder, LlamaConfig
from ..multimodal import PLACEHOLDER_ID, splice
from ..templates import Tokenizer, get_template, has_tokenizer

PARAMS = "params.json"
CHECKPOINT = "consolidated.00-of-01.pth"
META_FIELDS = ("dim", "n_layers", "n_heads", "multiple_of", "norm_eps", "vocab_size")  # config/llama2/7B.json
OPTIONAL_FIELDS = ("max_seq_len", "max_batch_size", "imu", "imu_span_us")  # OneLLM's ModelArgs, then ours


def swiglu_hidden(dim: int, multiple_of: int) -> int:
    """LLaMA's FeedForward(hidden_dim=4·dim): 2/3 of it, rounded up to a multiple of ``multiple_of``."""
    h = int(2 * 4 * dim / 3)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


@dataclass(frozen=True)
class OneLLMConfig:
    """OneLLM's ``config/llama2/7B.json`` (Meta ``params.json`` fields) and the IMU path's sizes; ``imu_span_us``:
    a distilled draft's IMU span ending with a paired window (None: an original checkpoint's reading)."""

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    multiple_of: int = 256
    norm_eps: float = 1e-5
    vocab_size: int = 32000
    max_seq_len: int = 2048
    imu: OneLLMIMUConfig = field(default_factory=OneLLMIMUConfig)
    template: str = "v1"
    imu_span_us: int | None = None

    def __post_init__(self):
        if self.imu.out_dim != self.dim:
            raise ValueError(f"imu.out_dim ({self.imu.out_dim}) must equal the LLM's dim ({self.dim})")

    def llama(self) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=self.vocab_size, hidden_size=self.dim, intermediate_size=swiglu_hidden(self.dim, self.multiple_of),
            num_hidden_layers=self.n_layers, num_attention_heads=self.n_heads, rms_norm_eps=self.norm_eps,
            max_position_embeddings=self.max_seq_len,
        )

    @classmethod
    def from_llama(cls, c: LlamaConfig, imu: OneLLMIMUConfig, imu_span_us: int | None = None) -> OneLLMConfig:
        """The OneLLM config of a LLaMA decoder, or a ValueError saying what OneLLM's LLaMA-2 cannot hold."""
        lacks = [what for has, what in (
            (c.num_key_value_heads != c.num_attention_heads, "grouped-query attention"),
            (c.head_dim * c.num_attention_heads != c.hidden_size, "head_dim other than hidden_size / heads"),
            (c.rope_theta != 10000.0 or bool(c.rope_scaling), "RoPE other than theta 10000, unscaled"),
            (c.tie_word_embeddings, "tied embeddings"), (c.attention_bias, "attention biases"), (c.mlp_bias, "MLP biases"),
        ) if has]
        if lacks:
            raise ValueError(f"OneLLM's LLaMA-2 has no {lacks[0]}")
        m = next((m for m in (256, 128, 64, 32, 16, 8, 4, 2, 1) if swiglu_hidden(c.hidden_size, m) == c.intermediate_size),
                 None)
        if m is None:
            raise ValueError(f"intermediate_size {c.intermediate_size} is not OneLLM's SwiGLU size for hidden_size "
                             f"{c.hidden_size} (2/3 of 4 x hidden, rounded up to a multiple_of)")
        return cls(c.hidden_size, c.num_hidden_layers, c.num_attention_heads, m, c.rms_norm_eps, c.vocab_size,
                   c.max_position_embeddings, imu, imu_span_us=imu_span_us)

    def params(self) -> dict:
        """``params.json``: Meta's fields, the sequence length, and ours where they are not the defaults."""
        d = {k: getattr(self, k) for k in (*META_FIELDS, "max_seq_len")}
        imu = {k: v for k, v in asdict(self.imu).items() if k != "out_dim"}
        if imu != {k: v for k, v in asdict(OneLLMIMUConfig()).items() if k != "out_dim"}:
            d["imu"] = imu
        if self.imu_span_us is not None:
            d["imu_span_us"] = self.imu_span_us
        return d


def _positive(path: Path, name: str, v, number: bool = False, expected: str | None = None) -> None:
    """A positive integer (``number``: any positive number) field, or a one-line error naming the file and it."""
    if isinstance(v, bool) or not isinstance(v, (int, float) if number else int) or not v > 0:
        expected = expected or f"a positive {'number' if number else 'integer'}"
        raise CheckpointError(f"{path}: field {name!r} is {json.dumps(v)}; expected {expected}")


def read_config(pth: Path) -> OneLLMConfig:
    """The config in ``params.json`` beside ``pth`` (see the module docstring), or OneLLM's 7B where there is none."""
    path = pth.parent / PARAMS
    if not path.exists():
        return OneLLMConfig()
    d = read_json(path)
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object of Meta's params.json fields ({', '.join(META_FIELDS)})")
    missing = [k for k in META_FIELDS if k not in d]
    if missing:
        raise CheckpointError(f"{path}: field {missing[0]!r} missing (Meta's params.json: {', '.join(META_FIELDS)})")
    unknown = [k for k in d if k not in META_FIELDS + OPTIONAL_FIELDS]
    if unknown:
        raise CheckpointError(f"{path}: field {unknown[0]!r} is not one OneLLM reads (known: "
                              f"{', '.join(META_FIELDS + OPTIONAL_FIELDS)})")
    for k in ("dim", "n_layers", "n_heads", "multiple_of", "max_seq_len", "max_batch_size", "imu_span_us"):
        if k in d:
            _positive(path, k, d[k])
    _positive(path, "norm_eps", d["norm_eps"], number=True)
    if d["vocab_size"] != -1:
        _positive(path, "vocab_size", d["vocab_size"], expected="a positive integer, or -1 (the tokenizer's)")
    imu, sizes = d.get("imu", {}), tuple(f.name for f in fields(OneLLMIMUConfig) if f.name != "out_dim")
    if not isinstance(imu, dict):
        raise CheckpointError(f"{path}: field 'imu' is {json.dumps(imu)}; expected an object of the IMU path's sizes")
    for k, v in imu.items():
        if k not in sizes:
            raise CheckpointError(f"{path}: field 'imu.{k}' is not one of the IMU path's sizes ({', '.join(sizes)})")
        _positive(path, f"imu.{k}", v, number=k.endswith("eps"))
    if d["dim"] % d["n_heads"]:
        raise CheckpointError(f"{path}: field 'dim' {d['dim']} is not a multiple of 'n_heads' {d['n_heads']}")
    return OneLLMConfig(d["dim"], d["n_layers"], d["n_heads"], d["multiple_of"], d["norm_eps"], d["vocab_size"],
                        d.get("max_seq_len", 2048), OneLLMIMUConfig(**imu, out_dim=d["dim"]),
                        imu_span_us=d.get("imu_span_us"))


def checkpoint_file(path: Path) -> Path | None:
    """OneLLM's ``consolidated.*.pth``: ``path`` itself, or the one such file of a folder without ``config.json``
    (a OneLLM draft folder); None where ``path`` is neither."""
    if path.suffix == ".pth":
        return path
    if not path.is_dir() or (path / "config.json").exists():
        return None
    found = sorted(path.glob("consolidated.*.pth"))
    if len(found) > 1:
        raise CheckpointError(f"{path}: {len(found)} consolidated.*.pth files ({', '.join(p.name for p in found)}); "
                              "expected one (model-parallel shards are not supported)")
    return found[0] if found else None


def load_imu_path(path: str | Path) -> OneLLMIMUEncoder:
    """The IMU path alone of a OneLLM checkpoint (the ``.pth`` or its folder; sizes from ``params.json``)."""
    file = checkpoint_file(Path(path))
    if file is None or not file.is_file():
        raise CheckpointError(f"{path}: file not found (expected OneLLM's {CHECKPOINT}, or a folder holding it)")
    return load_imu_encoder(load_weights_file(file), read_config(file).imu, str(file))


def meta_to_hf_rope(w: Tensor, n_heads: int) -> Tensor:
    """Reorder q/k projection rows from interleaved RoPE pairs (2i, 2i+1) to rotate-half pairs (i, i + d/2)."""
    out, inp = w.shape
    return w.view(n_heads, out // n_heads // 2, 2, inp).transpose(1, 2).reshape(out, inp)


def hf_to_meta_rope(w: Tensor, n_heads: int) -> Tensor:
    """The inverse of :func:`meta_to_hf_rope`: rotate-half rows back to OneLLM's interleaved pairs."""
    out, inp = w.shape
    return w.view(n_heads, 2, out // n_heads // 2, inp).transpose(1, 2).reshape(out, inp)


def _meta_names(cfg: LlamaConfig) -> dict[str, str]:
    """OneLLM's LLaMA-2 keys → Hugging Face names."""
    names = {"llma.tok_embeddings.weight": "model.embed_tokens.weight", "llma.norm.weight": "model.norm.weight",
             "llma.output.weight": "lm_head.weight"}
    per_layer = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
                 "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
                 "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
                 "feed_forward.w3": "mlp.up_proj", "attention_norm": "input_layernorm",
                 "ffn_norm": "post_attention_layernorm"}
    for i in range(cfg.num_hidden_layers):
        names.update({f"llma.layers.{i}.{m}.weight": f"model.layers.{i}.{h}.weight" for m, h in per_layer.items()})
    return names


def _rope_rows(sd: dict[str, Tensor], cfg: LlamaConfig, permute) -> dict[str, Tensor]:
    """``sd`` (HF names) with every q/k projection's rows permuted by ``permute``."""
    out = dict(sd)
    for i in range(cfg.num_hidden_layers):
        for proj, heads in (("q_proj", cfg.num_attention_heads), ("k_proj", cfg.num_key_value_heads)):
            key = f"model.layers.{i}.self_attn.{proj}.weight"
            out[key] = permute(out[key], heads)
    return out


def decoder_state_dict(sd: dict[str, Tensor], cfg: LlamaConfig, source: str) -> dict[str, Tensor]:
    """The LLaMA-2 tensors of a OneLLM state dict under Hugging Face names; a missing Meta key is an error."""
    names = _meta_names(cfg)
    missing = [k for k in names if k not in sd]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{source}: missing key {missing[0]!r} of OneLLM's LLaMA-2{more}")
    return _rope_rows({hf: sd[meta] for meta, hf in names.items()}, cfg, meta_to_hf_rope)


def meta_state_dict(decoder: Decoder) -> dict[str, Tensor]:
    """A decoder's tensors under OneLLM's keys, q/k rows in its interleaved order: the inverse of
    :func:`decoder_state_dict`."""
    hf = _rope_rows(decoder.state_dict(), decoder.config, hf_to_meta_rope)
    return {meta: hf[name].contiguous() for meta, name in _meta_names(decoder.config).items()}


def prompt_ids(tokenizer: Tokenizer, query: str, template: str = "v1") -> list[int]:
    """BOS, the placeholder for the 32 IMU embeddings, then the rest of the ``v1`` prompt (OneLLM's order)."""
    ids = tokenizer.encode(get_template(template).prompt(query))
    return ids[:1] + [PLACEHOLDER_ID] + ids[1:]


class OneLLM:
    """OneLLM's IMU route: ``prompt_embeds(query, imu)`` = BOS, start tag, 30 IMU tokens, end tag, ``v1`` prompt."""

    def __init__(self, decoder: Decoder, encoder: OneLLMIMUEncoder, tokenizer: Tokenizer, config: OneLLMConfig):
        self.decoder, self.encoder, self.tokenizer, self.config = decoder, encoder, tokenizer, config

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        tokenizer_folder: str | Path | None = None,
        config: OneLLMConfig | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> OneLLM:
        """Load a ``consolidated.*.pth`` (tensors only, ``weights_only``) or the folder holding it, with the
        tokenizer beside it, else ``tokenizer_folder``'s (OneLLM's LLaMA-2 one). ``config``: default
        :func:`read_config` (``params.json`` beside the file, else the 7B)."""
        path = Path(path)
        file = checkpoint_file(path)
        if file is None or not file.is_file():
            raise CheckpointError(f"{path}: file not found (expected OneLLM's {CHECKPOINT}, or a folder holding it)")
        config = config or read_config(file)
        tok_dir = file.parent if has_tokenizer(file.parent) else tokenizer_folder
        if tok_dir is None:
            raise CheckpointError(f"{file.parent}: no tokenizer there; give OneLLM's LLaMA-2 tokenizer folder")
        tok = Tokenizer(tok_dir)
        if config.vocab_size == -1:  # as OneLLM: the tokenizer's
            config = replace(config, vocab_size=tok.vocab_size)
        if tok.vocab_size > config.vocab_size:  # fewer: an embedding padded past the tokenizer, as many are
            raise CheckpointError(f"{tok_dir}: tokenizer has {tok.vocab_size} tokens, more than the OneLLM config's "
                                  f"vocab_size {config.vocab_size}")
        sd = load_weights_file(file)
        llama = config.llama()
        decoder = build_decoder(llama, decoder_state_dict(sd, llama, str(file)), str(file), dtype, device)
        encoder = load_imu_encoder(sd, config.imu, str(file), dtype).to(device)
        return cls(decoder.eval(), encoder, tok, config)

    def save_pretrained(self, folder: str | Path) -> None:
        """``consolidated.00-of-01.pth`` (the LLM and the IMU path under OneLLM's keys), ``params.json`` (the
        decoder's sizes, as cut or trained; :meth:`OneLLMConfig.from_llama`) and the tokenizer: what
        :meth:`from_pretrained` loads back as it is."""
        c = OneLLMConfig.from_llama(self.decoder.config, self.encoder.config, self.config.imu_span_us)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        sd = meta_state_dict(self.decoder) | {checkpoint_name(k): v.contiguous() for k, v in self.encoder.state_dict().items()}
        torch.save(sd, folder / CHECKPOINT)
        (folder / PARAMS).write_text(json.dumps(c.params(), indent=1) + "\n")
        self.tokenizer.save_pretrained(folder)

    def prompt_ids(self, query: str) -> list[int]:
        """BOS, the placeholder for the 32 IMU embeddings, then the rest of the ``v1`` prompt (OneLLM's order)."""
        return prompt_ids(self.tokenizer, query, self.config.template)

    @torch.no_grad()
    def prompt_embeds(self, query: str, imu: IMURecording | Tensor) -> Tensor:
        """Prompt embeddings [T, H] for a recording (its first 2 s, see :func:`~imuspec.imu.preprocess.onellm_input`)
        or one (6, window) input."""
        if isinstance(imu, IMURecording):
            imu = torch.from_numpy(onellm_input(imu))
        imu_tokens = self.encoder(imu[None].to(self.decoder.device))[0]
        return splice(self.decoder, self.prompt_ids(query), [imu_tokens])

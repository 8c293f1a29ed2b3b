"""``imuspec bench engine``: our AR and speculative decoding against transformers' ``generate`` and
``generate(assistant_model=...)`` on the same controlled-agreement weights, in one run; with ``--batch B``, B rows
at once against transformers' batched ``generate`` (its assisted generation takes one row)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from .model import Decoder
from .sampling import Sampling
from .speculative import Generation, GenerationConfig, generate, generate_batch, prefill
from .synthetic import agreement, calibrate, controlled_pair, n_params, parse_shape


def leviathan_speedup(alpha: float, gamma: int, c: float, verify_cost: float = 1.0) -> float:
    """Expected wall-time gain over AR: (1 − α^(γ+1)) / ((1 − α)(γc + v)) (Leviathan et al. 2023, Thm 3.8).

    The paper takes v = 1 (a (γ+1)-token verify costs one decode step, true when memory-bound); ``verify_cost``
    lets the measured v stand in where it is not, as on a CPU.
    """
    tokens = gamma + 1 if alpha >= 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)
    return tokens / (gamma * c + verify_cost)


def to_hf(model: Decoder):
    """transformers' LlamaForCausalLM sharing our parameters (no copy)."""
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    cfg = model.config
    hf_cfg = HFConfig(**cfg.to_hf())
    with torch.device("meta"):
        hf = LlamaForCausalLM(hf_cfg)
    hf.load_state_dict(model.state_dict(), assign=True, strict=True)
    with model.device:  # its RoPE buffer is not a parameter: rebuild it off the meta device
        hf.model.rotary_emb = type(hf.model.rotary_emb)(hf_cfg)
    return hf.eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def hf_generate(hf, prompt: torch.Tensor, n: int, assistant=None, gamma: int = 0) -> tuple[list[int], float]:
    from transformers.utils import logging

    logging.set_verbosity_error()  # its deprecation notices about min_new_tokens are not ours to fix
    kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    if assistant is not None:
        assistant.generation_config.num_assistant_tokens = gamma
        assistant.generation_config.num_assistant_tokens_schedule = "constant"
        assistant.generation_config.assistant_confidence_threshold = 0.0
        kw["assistant_model"] = assistant
    _sync(prompt.device)
    t = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(prompt[None], **kw)
    _sync(prompt.device)
    return out[0, len(prompt):].tolist(), time.perf_counter() - t


def hf_generate_batch(hf, prompts: list[torch.Tensor], n: int, eos: tuple[int, ...] = ()) -> tuple[list[list[int]], float]:
    """transformers' batched greedy ``generate`` of the target alone: prompts (ids, or embeddings through
    ``inputs_embeds``) left-padded under an attention mask; each row cut after its first EOS, as ours stops."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    t = max(len(p) for p in prompts)
    x = torch.stack([torch.cat([p.new_zeros((t - len(p), *p.shape[1:])), p]) for p in prompts])
    mask = (torch.arange(t, device=x.device) >= torch.tensor([t - len(p) for p in prompts], device=x.device)[:, None]).long()
    kw = dict(attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=list(eos) or None)
    _sync(x.device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(inputs_embeds=x, **kw) if x.is_floating_point() else hf.generate(x, **kw)[:, t:]
    _sync(x.device)
    rows = [r[:next((i + 1 for i, tok in enumerate(r) if tok in eos), len(r))] for r in out.tolist()]
    return rows, time.perf_counter() - start


def bench_batch(target: Decoder, draft: Decoder, target_prompts: list[torch.Tensor], draft_prompts: list[torch.Tensor],
                cfg: GenerationConfig, batch: int, hf=None, alone: list[list[int]] | None = None) -> dict:
    """All rows in batches of ``batch``: total tokens/s and per-row latency (mean and max of the time until each
    row finished, its batch's start counted from 0), speculative and the target alone, and transformers' batched
    ``generate`` when ``hf`` (the target as a LlamaForCausalLM) is given. Rows are checked against the target
    decoding each alone (``alone``, computed here unless given): a row that differs is counted, with the target's
    top-2 logit margin where it first differs."""
    alone = alone or [generate(target, p, cfg).tokens for p in target_prompts]
    r = {"batch": batch, "rows": len(target_prompts)}
    chunks = [slice(i, i + batch) for i in range(0, len(target_prompts), batch)]
    for mode in ("spec", "target") + (("hf",) if hf is not None else ()):
        tokens, latency, wall, prefill_s = [], [], 0.0, 0.0
        for c in chunks:
            if mode == "hf":
                rows, s = hf_generate_batch(hf, target_prompts[c], cfg.max_new_tokens, cfg.eos_token_ids)
                tokens, latency, wall = tokens + rows, latency + [s] * len(rows), wall + s
                continue
            start = time.perf_counter()
            gens = generate_batch(target, target_prompts[c], cfg, *((draft, draft_prompts[c]) if mode == "spec" else ()))
            wall += time.perf_counter() - start
            tokens += [g.tokens for g in gens]
            latency += [g.stats.wall_s for g in gens]
            prefill_s += gens[0].stats.prefill_s
        differ = [(i, divergence(target, p, a, t)) for i, (p, a, t) in enumerate(zip(target_prompts, alone, tokens)) if a != t]
        n = sum(map(len, tokens))
        r[mode] = {"tokens_per_s": n / wall, "wall_s": wall, "tokens": n,
                   # ours only: the tokens after the first (which the prefill gives) over the time after the prefills
                   "decode_tokens_per_s": (n - len(tokens)) / (wall - prefill_s) if mode != "hf" else None,
                   "latency_mean_s": sum(latency) / len(latency), "latency_max_s": max(latency),
                   "rows_differing_from_alone": len(differ),
                   "first_difference": [{"row": i, "position": d[0], "top2_margin": d[1]} for i, d in differ]}
    return r


def divergence(target: Decoder, prompt: torch.Tensor, a: list[int], b: list[int]) -> tuple[int, float] | None:
    """Where two continuations of ``prompt`` first differ, and the target's top-2 logit margin there (decoded alone,
    fp32): a batch's other reduction order may flip a token only where that margin is within rounding."""
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    if a == b:
        return None
    seen = torch.tensor(a[:i], dtype=torch.long, device=prompt.device)
    seq = torch.cat([prompt, target.embed(seen).to(prompt.dtype) if prompt.is_floating_point() else seen])
    with torch.inference_mode():
        top = prefill(target, [seq])[0].topk(2).values
    return i, float(top[0] - top[1])


def bench_engine(
    target_shape: str = "cpu-100m",
    draft_shape: str = "cpu-5m",
    eps: float | None = None,
    alpha: float = 0.8,
    gamma: int = 4,
    prompt_len: int = 64,
    new_tokens: int = 128,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    hf: bool = True,
    compile: bool = False,
    say: Callable[[str], None] = lambda _: None,
    tree: int | str | None = None,
    batch: int = 1,
) -> dict:
    """One run on one set of weights; ε is calibrated to greedy agreement ``alpha`` unless given. With ``batch`` > 1,
    ``batch`` prompts of different lengths (up to ``prompt_len``) decode as one batch (:func:`bench_batch`). ``say``
    hears which phase starts (the whole run takes minutes on a CPU)."""
    dev = torch.device(device)
    say(f"building the {target_shape} / {draft_shape} pair")
    t_cfg, d_cfg = parse_shape(target_shape), parse_shape(draft_shape)
    target, draft = controlled_pair(t_cfg, d_cfg, eps if eps is not None else 0.05, seed, dev, dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    prompt = torch.randint(3, t_cfg.vocab_size, (prompt_len,), generator=gen).to(dev)
    for m in (target, draft):
        # the run, or the warm-up if longer
        m.setup_cache(prompt_len + max(new_tokens, 2 * gamma + 2) + GenerationConfig(gamma=gamma, tree=tree).draft_slots)
    if eps is None:
        say(f"calibrating eps to greedy agreement {alpha}")
        eps = calibrate(target, draft, 0.05, alpha, torch.randint(3, t_cfg.vocab_size, (prompt_len + new_tokens,), generator=gen).to(dev))
    cfg = GenerationConfig(max_new_tokens=new_tokens, gamma=gamma, sampling=Sampling(), seed=seed, tree=tree,
                           eos_token_ids=())  # a fixed length, as transformers' min_new_tokens
    hf_pair = (to_hf(target), to_hf(draft)) if hf else None  # before compile_steps fuses our projections
    if batch > 1:
        prompts = [prompt[:prompt_len - i * prompt_len // (2 * batch)] for i in range(batch)]
        generate_batch(target, prompts[:2], GenerationConfig(max_new_tokens=4, gamma=gamma, tree=tree), draft, prompts[:2])
        return {"device": f"{dev}", "dtype": str(dtype).removeprefix("torch."), "target_shape": target_shape,
                "draft_shape": draft_shape, "eps": eps, "gamma": gamma, "tree": tree, "new_tokens": new_tokens,
                "prompt_lens": [len(p) for p in prompts],
                **bench_batch(target, draft, prompts, prompts, cfg, batch, hf_pair and hf_pair[0])}
    if compile:
        target.compile_steps()
        draft.compile_steps()
        with torch.inference_mode():
            target.warm_steps([1, gamma + 1])
            draft.warm_steps([1, 2])
    warm = GenerationConfig(max_new_tokens=2 * gamma + 2, gamma=gamma, tree=tree, eos_token_ids=())
    say("warming up")
    generate(target, prompt, warm)
    generate(target, prompt, warm, draft, prompt)

    say(f"ours: target alone, {new_tokens} tokens")
    ar: Generation = generate(target, prompt, cfg)
    say(f"ours: speculative, gamma {gamma}")
    spec: Generation = generate(target, prompt, cfg, draft, prompt)
    s = spec.stats
    t_step = ar.stats.target_s / ar.stats.steps
    d_step = s.draft_s / sum(s.drafted_per_step)
    c = d_step / t_step
    predicted = leviathan_speedup(s.alpha_token, gamma, c)
    v = s.target_s / s.steps / t_step
    measured = s.tokens_per_s / ar.stats.tokens_per_s
    r = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": str(dtype).removeprefix("torch."),
        "target_shape": target_shape, "target_params": n_params(t_cfg),
        "draft_shape": draft_shape, "draft_params": n_params(d_cfg),
        "eps": eps, "teacher_forced_agreement": agreement(target, draft, prompt),
        "gamma": gamma, "tree": tree, "prompt_len": prompt_len, "new_tokens": new_tokens,
        "mean_tree_budget": sum(s.budget_per_step) / s.steps,
        "ar_tokens_per_s": ar.stats.tokens_per_s,
        "spec_tokens_per_s": s.tokens_per_s,
        "identical_to_ar": spec.tokens == ar.tokens,
        "alpha": s.alpha, "alpha_token": s.alpha_token, "tau": s.tau,
        "target_step_ms": 1e3 * t_step, "draft_step_ms": 1e3 * d_step, "c": c,
        "verify_step_ms": 1e3 * s.target_s / s.steps, "verify_cost": v,  # Leviathan takes v = 1
        "loop_overhead": 1 - (s.prefill_s + s.draft_s + s.target_s) / s.wall_s,  # time outside the forwards
        "speedup": measured, "predicted_speedup": predicted, "measured_over_predicted": measured / predicted,
        "predicted_with_verify_cost": leviathan_speedup(s.alpha_token, gamma, c, v),
    }
    if hf_pair:
        hf_t, hf_d = hf_pair
        say("transformers: generate")
        hf_generate(hf_t, prompt, 2)  # warm-up
        hf_tokens, hf_s = hf_generate(hf_t, prompt, new_tokens)
        say("transformers: generate(assistant_model=...)")
        hf_a_tokens, hf_a_s = hf_generate(hf_t, prompt, new_tokens, hf_d, gamma)
        r.update({
            "hf_generate_tokens_per_s": new_tokens / hf_s,
            "hf_assisted_tokens_per_s": new_tokens / hf_a_s,
            "hf_identical_to_ours": hf_tokens == ar.tokens and hf_a_tokens == ar.tokens,
            "spec_over_hf_generate": s.tokens_per_s * hf_s / new_tokens,
            "spec_over_hf_assisted": s.tokens_per_s * hf_a_s / new_tokens,
        })
    return r


def format_batch_table(r: dict) -> str:
    """One line per mode of a :func:`bench_batch` result."""
    lines = [f"{r['rows']} rows in batches of {r['batch']}",
             f"{'mode':8}{'tokens/s':>10}{'row latency mean/max s':>24}{'rows != alone':>15}"]
    for mode in ("spec", "target", "hf"):
        if mode in r:
            m = r[mode]
            lines.append(f"{mode:8}{m['tokens_per_s']:>10.1f}{m['latency_mean_s']:>13.3f} / {m['latency_max_s']:<8.3f}"
                         f"{m['rows_differing_from_alone']:>15}")
    if "hf" in r:
        lines.append(f"speculative over transformers' batched generate: {r['spec']['tokens_per_s'] / r['hf']['tokens_per_s']:.2f}x")
    return "\n".join(lines)


def format_table(r: dict) -> str:
    if "batch" in r:
        return format_batch_table(r)
    rows = [
        ("device", r["device"] + " " + r["dtype"]),
        ("target / draft", f"{r['target_shape']} ({r['target_params'] / 1e6:.1f}M) / {r['draft_shape']} ({r['draft_params'] / 1e6:.1f}M)"),
        ("eps, gamma, tree", f"{r['eps']:.4g}, {r['gamma']}, {r.get('tree')} (mean nodes {r['mean_tree_budget']:.1f})"),
        ("prompt, new tokens", f"{r['prompt_len']}, {r['new_tokens']}"),
        ("ours AR tokens/s", f"{r['ar_tokens_per_s']:.1f}"),
        ("ours speculative tokens/s", f"{r['spec_tokens_per_s']:.1f}  (identical to AR: {r['identical_to_ar']})"),
        ("alpha (kept/drafted)", f"{r['alpha']:.3f}"),
        ("alpha per token (Leviathan)", f"{r['alpha_token']:.3f}"),
        ("tau (tokens per target forward)", f"{r['tau']:.2f}"),
        ("c (draft step / target step)", f"{r['c']:.4f}  ({r['draft_step_ms']:.2f} / {r['target_step_ms']:.2f} ms)"),
        ("verify step (gamma+1 tokens)", f"{r['verify_step_ms']:.2f} ms  (v = {r['verify_cost']:.2f}x a one-token step)"),
        ("time outside forwards", f"{100 * r['loop_overhead']:.1f} % of the speculative run"),
        ("speed-up over our AR", f"{r['speedup']:.2f}x"),
        ("Leviathan predicted", f"{r['predicted_speedup']:.2f}x  (measured/predicted {r['measured_over_predicted']:.2f})"),
        ("predicted with measured v", f"{r['predicted_with_verify_cost']:.2f}x"),
    ]
    if "hf_generate_tokens_per_s" in r:
        rows += [
            ("HF generate tokens/s", f"{r['hf_generate_tokens_per_s']:.1f}  (ours speculative {r['spec_over_hf_generate']:.2f}x)"),
            ("HF assisted tokens/s", f"{r['hf_assisted_tokens_per_s']:.1f}  (ours speculative {r['spec_over_hf_assisted']:.2f}x)"),
            ("HF output identical to ours", str(r["hf_identical_to_ours"])),
        ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)

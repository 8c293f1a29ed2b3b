"""GPU benchmark of issue 12, one run per section set: AR decode against the copy-bandwidth floor, the whole-model
compiled step before and the regional one (one layer compiled, stamped out) after, or the Triton split-K attention
(``--kernel``); compiled v(T); chains vs token trees (budgets, auto) at two acceptance rates; batches; int8 / int4
drafts; distillation's teacher and training throughput; transformers' generate and assisted generation as the peer.

    PYTHONPATH=src python benchmarks/gpu_wave.py --sections ar,trees,hf \
        --out benchmarks/results/gpu_wave_<card>_<date>.json
    PYTHONPATH=src python benchmarks/gpu_wave.py --sections quant,distill,batch,vsweep --out ...

``--device cpu --target-shape cpu-5m --draft-shape cpu-5m`` is a dry run of the logic (no kernel, no graphs).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

from gpu_decode import DTYPES, copy_bandwidth, first_divergence, weight_bytes
from imuspec import kernels
from imuspec.adapt import save_profile
from imuspec.bench import hf_generate, leviathan_speedup, to_hf
from imuspec.model import few_query_attention
from imuspec.quant import quantize
from imuspec.speculative import AUTO_BUDGETS, GenerationConfig, generate, generate_batch
from imuspec.synthetic import agreement, calibrate, controlled_pair, n_params, parse_shape
from imuspec.tree import TreeShape


# the quant section's drafts: (which model, bits; None = as it is)
QUANT = {"draft68m_bf16": ("draft", None), "draft68m_int8": ("draft", 8), "draft68m_int4": ("draft", 4),
         "target7b_int4": ("target", 4), "target7b_int8": ("target", 8)}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def step_time(model, t: int, at: int, tree: bool = False, repeats: int = 20) -> float:
    """Median seconds of one compiled step of t tokens after ``at`` cached ones (``tree``: through the tree-mask
    graph that a t-1 node tree's verify uses, with a causal mask)."""
    ids = torch.randint(3, model.config.vocab_size, (1, t), device=model.device)
    kw = {}
    if tree:
        kw = {"positions": at + torch.arange(t, device=model.device)[None],
              "tree_mask": torch.ones(t, t, dtype=torch.bool, device=model.device).tril()[None]}
    times = []
    for i in range(repeats + 3):
        model.rollback(at)
        sync(model.device)
        t0 = time.perf_counter()
        model.step(ids, **kw)
        sync(model.device)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    model.rollback(0)
    return statistics.median(times)


def check_kernel(dev, dtype) -> list[float]:
    """decode_attention vs few_query_attention on fresh random inputs (causal and tree masks, GQA): relative errors."""
    errs = []
    for b, h, kv, t, s in [(1, 32, 32, 1, 904), (1, 32, 32, 9, 904), (4, 32, 8, 5, 300), (2, 32, 32, 33, 700)]:
        q, k, v = (torch.randn(b, n, m, 128, device=dev, dtype=dtype) for n, m in ((h, t), (kv, s), (kv, s)))
        n = torch.randint(t, s, (b,), device=dev)
        slots = (n - t)[:, None] + torch.arange(t, device=dev)
        mask = torch.arange(s, device=dev) <= slots[:, :, None]
        mask[:, t // 2:, :] &= torch.rand(b, 1, s, device=dev) > 0.3  # holes, as in a tree
        mask |= torch.arange(s, device=dev) == slots[:, :, None]
        ref = few_query_attention(q.double(), k.double(), v.double(), mask[:, None])
        out = kernels.decode_attention(q, k, v, mask, n, kernels.multiprocessors(dev)).double()
        errs.append(float((out - ref).norm() / ref.norm()))
    assert all(e < 2e-2 for e in errs), f"decode_attention differs from the reference: {errs}"
    return errs


def ar(target, prompt, n, repeats=3) -> dict:
    cfg = GenerationConfig(eos_token_ids=(), max_new_tokens=n)
    generate(target, prompt, GenerationConfig(eos_token_ids=(), max_new_tokens=4))
    runs = [generate(target, prompt, cfg) for _ in range(repeats)]
    steps = [g.stats.target_s / g.stats.steps for g in runs]
    return {"tokens": runs[0].tokens, "decode_step_ms_min": 1e3 * min(steps),
            "decode_step_ms_median": 1e3 * statistics.median(steps),
            "tokens_per_s_median": statistics.median(g.stats.tokens_per_s for g in runs)}


def spec_row(target, draft, prompt, cfg, ar_row, v1, v_of) -> dict:
    # compile / capture first, with the whole run: "auto" may pick any of its shapes, and a short warm-up left a
    # run's first row drafting at twice its cost (2026-12-02 run D: chain γ = 8, 2.99 against 1.48 ms per step)
    generate(target, prompt, cfg, draft, prompt)
    g = generate(target, prompt, cfg, draft, prompt)
    s = g.stats
    ar_tps = ar_row["tokens_per_s_median"]
    nodes = statistics.mean(s.budget_per_step) if s.budget_per_step else 0
    draft_per_step = s.draft_s / s.steps
    # predicted from the compiled v(T) measured alone, this run's τ and draft time: a loop with no overhead
    pred_tps = s.tau / (draft_per_step + v_of(round(nodes) + 1)) if s.steps else 0
    row = {"tokens_per_s": s.tokens_per_s, "speedup_over_ar": s.tokens_per_s / ar_tps, "tau": s.tau,
           "alpha": s.alpha, "alpha_token": s.alpha_token, "mean_nodes": nodes, "steps": s.steps,
           "draft_ms_per_step": 1e3 * draft_per_step, "verify_ms_per_step": 1e3 * s.target_s / s.steps,
           "c_per_draft_token": draft_per_step / max(1, statistics.mean(s.drafted_per_step)) / v1,
           "predicted_tokens_per_s": pred_tps, "measured_over_predicted": s.tokens_per_s / pred_tps,
           "identical_to_ar": g.tokens == ar_row["tokens"],
           "first_divergence": first_divergence(g.tokens, ar_row["tokens"]),
           "loop_overhead": 1 - (s.prefill_s + s.draft_s + s.target_s) / s.wall_s, "fallback": s.fallback}
    if cfg.tree is None and isinstance(cfg.gamma, int) and s.alpha_token:
        c = row["c_per_draft_token"]
        v_rel = row["verify_ms_per_step"] / 1e3 / v1
        row["leviathan_predicted_speedup"] = leviathan_speedup(s.alpha_token, cfg.gamma, c, v_rel)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="ar,trees,hf", help="comma list of ar, trees, auto, draftcost, "
                    "batch, quant, distill, vsweep, vall, hf")
    ap.add_argument("--kernel", action="store_true", help="ar's after: the Triton split-K attention (else: regional)")
    ap.add_argument("--vsweep", type=int, nargs="+", default=[2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64])
    ap.add_argument("--vall-max", type=int, default=64, help="vall: v(T) for T = 2..this, one dynamic graph")
    ap.add_argument("--quant", nargs="+", default=list(QUANT), choices=list(QUANT), help="the quant section's drafts")
    ap.add_argument("--target-shape", default="vicuna-7b")
    ap.add_argument("--draft-shape", default="llama-68m")
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.6, 0.8])
    ap.add_argument("--gammas", type=int, nargs="+", default=[4, 6, 8])
    ap.add_argument("--budgets", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--spec-batch-max", type=int, default=32)
    ap.add_argument("--hf-batches", type=int, nargs="*", default=[4, 16])
    ap.add_argument("--prompt-len", type=int, default=640)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget-s", type=float, default=480, help="skip what is left of a section past this wall time")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    sections = set(a.sections.split(","))
    dev, dtype = torch.device(a.device), DTYPES[a.dtype] if a.device == "cuda" else torch.float32
    cuda = dev.type == "cuda"
    t0 = time.perf_counter()
    import transformers

    r: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
               "transformers": transformers.__version__, "dtype": str(dtype),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "target_shape": a.target_shape, "draft_shape": a.draft_shape, "prompt_len": a.prompt_len,
               "new_tokens": a.new_tokens, "sections": sorted(sections)}

    def save():
        r["wall_s"] = time.perf_counter() - t0
        with open(a.out, "w") as f:
            json.dump(r, f, indent=1)

    bw = copy_bandwidth() if cuda else 1e11
    t_cfg, d_cfg = parse_shape(a.target_shape), parse_shape(a.draft_shape)
    target, draft = controlled_pair(t_cfg, d_cfg, 0.05, a.seed, dev, dtype)
    floor_s = weight_bytes(target) / bw
    r.update(copy_bandwidth_tb_s=bw / 1e12, target_params=n_params(t_cfg), draft_params=n_params(d_cfg),
             floor_ms=1e3 * floor_s, floor_tokens_per_s=1 / floor_s)
    gen = torch.Generator().manual_seed(a.seed + 1)
    prompt = torch.randint(3, t_cfg.vocab_size, (a.prompt_len,), generator=gen).to(dev)
    calib_ids = torch.randint(3, t_cfg.vocab_size, (a.prompt_len + a.new_tokens,), generator=gen).to(dev)
    max_len = a.prompt_len + a.new_tokens + max(a.budgets + a.gammas + list(AUTO_BUDGETS)) + 2
    for m in (target, draft):
        m.setup_cache(max_len)
    hf_t = to_hf(target) if "hf" in sections else None  # shares our unfused weights: made before fusing
    hf_d = to_hf(draft) if "hf" in sections else None
    use_kernel = cuda and a.kernel and kernels.available(dev)
    if use_kernel:
        r["kernel_check_rel_err"] = check_kernel(dev, dtype)
    print(json.dumps({k: v for k, v in r.items()}), flush=True)

    torch.set_grad_enabled(False)
    over = lambda: time.perf_counter() - t0 > a.budget_s  # noqa: E731
    if "ar" in sections and cuda:
        # before: the whole-model graph per step shape; after: the regional graph (or the split-K kernel)
        rows = {}
        for name, kw in (("before", dict(regional=False)),
                         ("after", dict(kernel=True) if use_kernel else dict(regional=True))):
            c0 = time.perf_counter()
            target.compile_steps(**kw)
            target.warm_steps([1])
            r[f"compile_{name}_s"] = time.perf_counter() - c0
            rows[name] = ar(target, prompt, a.new_tokens)
            print(json.dumps({name: kw, "compile_s": r[f"compile_{name}_s"],
                              **{k: v for k, v in rows[name].items() if k != "tokens"}}), flush=True)
        before, after = rows["before"], rows["after"]
        r["ar"] = {"before": {k: v for k, v in before.items() if k != "tokens"},
                   "after": {k: v for k, v in after.items() if k != "tokens"},
                   "after_kernel": use_kernel, "after_regional": not use_kernel,
                   "before_fraction_of_floor": 1e3 * floor_s / before["decode_step_ms_median"],
                   "after_fraction_of_floor": 1e3 * floor_s / after["decode_step_ms_median"],
                   "after_identical_to_before": after["tokens"] == before["tokens"],
                   "after_first_divergence": first_divergence(after["tokens"], before["tokens"])}
        print(json.dumps(r["ar"]), flush=True)
        save()
    elif cuda:
        target.compile_steps(kernel=use_kernel)
    if cuda:
        c0 = time.perf_counter()
        draft.compile_steps(kernel=use_kernel)
        draft.warm_steps([1, 2])
        r["compile_draft_s"] = time.perf_counter() - c0

    # v(T), compiled: chain verifies (plain steps) and tree verifies (the tree-mask graph), each first timed with its
    # compile; the planner's profile (used by "auto") is these points interpolated
    r["v_ms"], r["v_tree_ms"], r["compile_s"] = {}, {}, {}
    v, v_tree = {}, {}

    def measure(t: int, tree: bool) -> float:
        got = v_tree if tree else v
        if t not in got:
            c0 = time.perf_counter()
            step_time(target, t, a.prompt_len, tree, repeats=1)
            r["compile_s"][f"{'tree' if tree else 'chain'}{t}"] = time.perf_counter() - c0
            got[t] = step_time(target, t, a.prompt_len, tree)
            (r["v_tree_ms"] if tree else r["v_ms"])[t] = 1e3 * got[t]
            print(json.dumps({"T": t, "tree": tree, "v_ms": 1e3 * got[t], "v_over_v1": got[t] / v.get(1, got[t]),
                              "compile_s": r["compile_s"]}), flush=True)
        return got[t]

    def v_of(t: int) -> float:
        pts = sorted({**v, **v_tree})
        both = {**v, **v_tree}
        lo = max((p for p in pts if p <= t), default=pts[0])
        hi = min((p for p in pts if p >= t), default=pts[-1])
        return both[lo] if hi == lo else both[lo] + (both[hi] - both[lo]) * (t - lo) / (hi - lo)

    def write_profile() -> None:
        save_profile(target, [v_of(t) for t in range(1, 66)])

    measure(1, False)

    if "vsweep" in sections:  # v(T) at more lengths (chain verifies), each compiled on first use
        for t in a.vsweep:
            if over():
                break
            measure(t, False)
        write_profile()
        save()

    if "vall" in sections:
        # v(T) for every T = 2..64 from one dynamic-length graph (compiled once, captured per T), against the static
        # graphs measured above at the same lengths: the engine's static graphs cost one compile per T (13-21 s).
        # The whole-model graph: a regional one does not compile with a symbolic length (torch 2.13's invoke_subgraph)
        r["v_dynamic_ms"], regional, target.regional = {}, target.regional, False
        try:
            c0 = time.perf_counter()
            fwd = torch.compile(target.forward, mode="reduce-overhead", fullgraph=True, dynamic=True)
            torch._inductor.config.triton.cudagraph_dynamic_shape_warn_limit = None
            for t in range(2, a.vall_max + 1):
                ids = torch.randint(3, t_cfg.vocab_size, (1, t), device=dev)
                times = []
                for i in range(13):
                    target.rollback(a.prompt_len)
                    sync(dev)
                    t1 = time.perf_counter()
                    torch.compiler.cudagraph_mark_step_begin()
                    fwd(ids=ids)
                    sync(dev)
                    if i >= 3:
                        times.append(time.perf_counter() - t1)
                r["v_dynamic_ms"][t] = 1e3 * statistics.median(times)
            target.rollback(0)
            r["v_dynamic_s"] = time.perf_counter() - c0
            r["v_dynamic_over_static"] = {t: r["v_dynamic_ms"][t] / (1e3 * v[t]) for t in v if t in r["v_dynamic_ms"]}
        except Exception as e:  # a benchmark of a compiler feature: record its failure, go on with the run
            r["v_dynamic_error"] = f"{type(e).__name__}: {e}"[:2000]
        target.regional = regional
        print(json.dumps({k: r.get(k) for k in ("v_dynamic_ms", "v_dynamic_s", "v_dynamic_over_static",
                                                 "v_dynamic_error")}), flush=True)
        save()

    if "trees" in sections or "auto" in sections:
        r["trees"] = []
        for alpha in a.alphas:
            if over() and r["trees"]:
                break
            eps = calibrate(target, draft, 0.05, alpha, calib_ids)
            ar_row = ar(target, prompt, a.new_tokens, repeats=1)
            row = {"alpha_target": alpha, "eps": eps, "teacher_forced_agreement": agreement(target, draft, calib_ids),
                   "ar_tokens_per_s": ar_row["tokens_per_s_median"], "chains": {}, "trees": {}}
            for g in a.gammas if "trees" in sections else []:
                if over():
                    break
                cfg = GenerationConfig(eos_token_ids=(), max_new_tokens=a.new_tokens, gamma=g)
                measure(g + 1, False)
                row["chains"][g] = spec_row(target, draft, prompt, cfg, ar_row, v[1], v_of)
                print(json.dumps({"alpha": alpha, "gamma": g, **row["chains"][g]}), flush=True)
            for b in (a.budgets if "trees" in sections else []) + ["auto"]:
                if over():
                    break
                cfg = GenerationConfig(eos_token_ids=(), max_new_tokens=a.new_tokens, gamma="auto" if b == "auto" else 4, tree=b)
                if b == "auto":
                    write_profile()
                else:
                    measure(TreeShape.for_budget(b).nodes + 1, True)
                row["trees"][b] = spec_row(target, draft, prompt, cfg, ar_row, v[1], v_of)
                print(json.dumps({"alpha": alpha, "tree": b, **row["trees"][b]}), flush=True)
            best_chain = max(row["chains"].values(), key=lambda x: x["tokens_per_s"], default=None)
            best_tree = max(row["trees"].values(), key=lambda x: x["tokens_per_s"], default=None)
            if best_chain and best_tree:
                row.update(best_chain_tokens_per_s=best_chain["tokens_per_s"],
                           best_tree_tokens_per_s=best_tree["tokens_per_s"],
                           best_chain_speedup=best_chain["speedup_over_ar"],
                           best_tree_speedup=best_tree["speedup_over_ar"])
            if hf_t is not None and alpha == min(a.alphas):
                g = max(row["chains"], key=lambda k: row["chains"][k]["tokens_per_s"]) if row["chains"] else 4
                hf_t.generation_config.eos_token_id = None
                toks, secs = hf_generate(hf_t, prompt, a.new_tokens, hf_d, g)
                best = max([x["tokens_per_s"] for x in list(row["chains"].values()) + list(row["trees"].values())],
                           default=0)
                row.update(hf_assisted_gamma=g, hf_assisted_tokens_per_s=a.new_tokens / secs,
                           ours_best_over_hf_assisted=best * secs / a.new_tokens)
                toks, secs = hf_generate(hf_t, prompt, a.new_tokens)
                row.update(hf_generate_tokens_per_s=a.new_tokens / secs,
                           ar_over_hf_generate=row["ar_tokens_per_s"] * secs / a.new_tokens)
            r["trees"].append(row)
            print(json.dumps({k: x for k, x in row.items() if k not in ("chains", "trees")}), flush=True)
            save()

    if "draftcost" in sections:  # where a chain's draft time goes: the compiled draft step alone vs tree.grow
        from imuspec.sampling import Sampling
        from imuspec.tree import grow

        draft.rollback(0)
        draft(ids=prompt[None])
        last = prompt[None, -1:]
        r["draftcost"] = {"draft_step_ms": 1e3 * step_time(draft, 1, a.prompt_len),
                          "draft_step2_ms": 1e3 * step_time(draft, 2, a.prompt_len)}
        gens = [torch.Generator(device=dev).manual_seed(0)]
        for g in (4, 8):
            times = []
            for i in range(13):
                draft.rollback(a.prompt_len)
                sync(dev)
                c0 = time.perf_counter()
                grow(draft, last, a.prompt_len, TreeShape.chain(g), Sampling(), gens)
                sync(dev)
                if i >= 3:
                    times.append(time.perf_counter() - c0)
            r["draftcost"][f"grow_chain{g}_ms"] = 1e3 * statistics.median(times)
        print(json.dumps(r["draftcost"]), flush=True)
        save()

    if "quant" in sections:
        # weight-only drafts at alpha ~ 0.8 (the bf16 68M draft's calibration): the 68M draft in int8, and a 7B-shaped
        # draft (the target's own copy: alpha from quantization noise alone, the best case for a seed-sized draft) in int4
        r["quant"] = {"eps": calibrate(target, draft, 0.05, max(a.alphas), calib_ids)}
        ar_row = ar(target, prompt, a.new_tokens, repeats=1)
        r["quant"]["ar_tokens_per_s"] = ar_row["tokens_per_s_median"]
        cfg = GenerationConfig(eos_token_ids=(), max_new_tokens=a.new_tokens, gamma=4)
        measure(5, False)

        def copy_of(m):
            compiled, m._compiled = m._compiled, None  # compiled graphs are bound to the original
            try:
                return copy.deepcopy(m)
            finally:
                m._compiled = compiled

        for name in a.quant:
            src, bits = (target if QUANT[name][0] == "target" else draft), QUANT[name][1]
            if over():
                break
            d = src if bits is None else quantize(copy_of(src), bits)
            c0 = time.perf_counter()
            if bits is not None:
                d.setup_cache(max_len)
                if cuda:
                    d.compile_steps()
                    d.warm_steps([1, 2])
            weights = [t for n, t in [*d.named_parameters(), *d.named_buffers()] if "kv_cache" not in n]
            row = {"bits": bits, "compile_s": time.perf_counter() - c0, "step_ms": 1e3 * step_time(d, 1, a.prompt_len),
                   "weight_bytes": sum(t.numel() * t.element_size() for t in weights)}
            row["step_over_v1"] = row["step_ms"] / 1e3 / v[1]
            row["agreement"] = agreement(target, d, calib_ids)
            row.update(spec_row(target, d, prompt, cfg, ar_row, v[1], v_of))
            r["quant"][name] = row
            print(json.dumps({name: row}), flush=True)
            if d is not src:
                del d
                if cuda:
                    torch.cuda.empty_cache()
            save()

    if "distill" in sections:
        # distillation's throughput on an EventGPT-shaped 7B target: the teacher (582 event embeddings + a text
        # prompt, greedy answers and top-64 probabilities, through distill.run_teacher) and draft training steps
        # (LLaSA layout: the shipped LIMU-BERT, a fresh projector; bf16 autocast, AdamW) for a target:2 cut and
        # the 68M shape
        from imuspec.distill import DistillConfig, DraftModel, hf_llama, imu_path, run_teacher, topk_distillation
        from imuspec.templates import Tokenizer

        r["distill"] = {"event_tokens": 582, "text_tokens": 40, "answer_tokens": 48, "top_k": 64}
        teacher = SimpleNamespace(decoder=target, tokenizer=SimpleNamespace(eos_id=t_cfg.eos_ids[0] if t_cfg.eos_ids else 2))
        text = torch.randint(3, t_cfg.vocab_size, (40,), generator=gen).to(dev)
        with torch.inference_mode():
            events = [target.embed(torch.randint(3, t_cfg.vocab_size, (582,), generator=gen).to(dev)) for _ in range(16)]
        prompt_of = lambda i: torch.cat([events[i % 16], target.embed(text)])  # noqa: E731
        for b in (1, 8):
            if over():
                break
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "teacher").mkdir()
                n = 16 if b > 1 else 4
                run_teacher(teacher, prompt_of, b, Path(tmp), b, 48, 64, b)  # compile / capture this batch's graphs
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "teacher").mkdir()
                got = run_teacher(teacher, prompt_of, n, Path(tmp), 8, 48, 64, b)
            r["distill"][f"teacher_batch{b}"] = {k: got[k] for k in ("seconds", "tokens_computed", "tokens_per_s")}
            print(json.dumps({"teacher_batch": b, **r["distill"][f"teacher_batch{b}"]}), flush=True)
            save()
        tok = Tokenizer(Path(__file__).resolve().parents[1] / "src" / "imuspec" / "weights" / "target")
        for name, c in (("target_cut2", replace(t_cfg, num_hidden_layers=2)), ("llama68m", d_cfg)):
            if over():
                break
            path = imu_path("limu-bert", c.hidden_size, DistillConfig(imu_points=40))  # the shipped LIMU-BERT
            model = DraftModel(hf_llama(c), path).to(dev).train()
            opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
            bsz, t_ans = 8, 48
            prompts = [path.prompt_ids(tok, "What am I doing, and what do I see?")] * bsz
            ans = torch.randint(3, c.vocab_size, (bsz, t_ans), device=dev)
            lengths = torch.full((bsz,), t_ans, device=dev)
            imu = torch.randn(bsz, 40, 6, device=dev)
            ids = torch.randint(3, c.vocab_size, (bsz, t_ans, 64), device=dev, dtype=torch.int32)
            p = torch.softmax(torch.randn(bsz, t_ans, 64, device=dev), -1).half() * 0.9
            rest = torch.full((bsz, t_ans), 0.1, device=dev, dtype=torch.float16)
            times = []
            with torch.enable_grad():
                for i in range(13):
                    sync(dev)
                    c0 = time.perf_counter()
                    with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
                        logits = model(prompts, ans, lengths, imu)
                    loss = topk_distillation(logits, ids, p, rest, lengths, "tvd")
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sync(dev)
                    if i >= 3:
                        times.append(time.perf_counter() - c0)
            step = statistics.median(times)
            r["distill"][f"train_{name}"] = {"params": sum(q.numel() for q in model.parameters()), "batch": bsz,
                                             "answer_tokens": t_ans, "step_s_median": step, "steps_per_s": 1 / step,
                                             "items_per_s": bsz / step,
                                             "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
            print(json.dumps({name: r["distill"][f"train_{name}"]}), flush=True)
            del model, opt
            if cuda:
                torch.cuda.empty_cache()
            save()

    if "batch" in sections:
        # target-only batches (rows finish together: one compiled shape per B). A speculative batch's rows finish apart;
        # compiled, they stay in it, parked (generate_batch), so it too compiles one set of graphs per B. It runs for
        # B <= --spec-batch-max, twice, timing the second.
        r["batch"] = []
        r["batch_alpha_eps"] = calibrate(target, draft, 0.05, max(a.alphas), calib_ids)
        cfg = GenerationConfig(eos_token_ids=(), max_new_tokens=a.new_tokens, gamma=4)
        for b in a.batches:
            if over():
                break
            prompts = [torch.randint(3, t_cfg.vocab_size, (a.prompt_len,), generator=gen).to(dev) for _ in range(b)]
            row = {"batch": b}
            for name, d in (("target_only", None), ("speculative_gamma4", draft)):
                if d is not None and b > a.spec_batch_max:
                    continue
                warm = cfg if d is not None else replace(cfg, max_new_tokens=8)
                generate_batch(target, prompts, warm, d, prompts if d else None)
                sync(dev)
                t1 = time.perf_counter()
                outs = generate_batch(target, prompts, cfg, d, prompts if d else None)
                sync(dev)
                secs = time.perf_counter() - t1
                row[f"{name}_tokens_per_s"] = sum(len(o.tokens) for o in outs) / secs
                print(json.dumps({"batch": b, name: row[f"{name}_tokens_per_s"]}), flush=True)
            if hf_t is not None and b in a.hf_batches:
                ids = torch.stack(prompts)
                sync(dev)
                t1 = time.perf_counter()
                hf_t.generate(ids, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False,
                              pad_token_id=0, eos_token_id=None)
                sync(dev)
                row["hf_generate_tokens_per_s"] = b * a.new_tokens / (time.perf_counter() - t1)
                print(json.dumps(row), flush=True)
            r["batch"].append(row)
            save()
    save()
    print(json.dumps({k: x for k, x in r.items() if k not in ("trees", "batch")}, indent=1))


if __name__ == "__main__":
    main()

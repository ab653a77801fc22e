"""The Gemma 4 target: transformers' own Gemma4ForCausalLM (text model, `gemma4_text`), trained
from scratch on the tokenized stdlib, then used to write the drafters' training data.

Architecture (defaults): the 31B's code paths at toy size — 6 layers in the 5:1 sliding/full
pattern (last layer full), hidden 256, 4 query heads, sliding layers head_dim 64 with 2 KV heads,
full layers head_dim 128 ("global head dim", 2x like 256/512) with 1 KV head and
attention_k_eq_v (V = raw K projection, no v_proj), proportional RoPE (partial_rotary_factor
0.25, theta 1e6) on full layers and default RoPE (theta 1e4) on sliding ones, sliding window 128,
GELU-tanh MLP 1024, final logit softcap 30, tied embeddings, vocab from the tokenizer.

    python target.py train --work OUT/work --out OUT/hf/target [options]
        Trains, evaluates held-out perplexity, writes a sample completion, saves the HF folder
        (config.json, generation_config.json, model.safetensors, tokenizer files).
    python target.py gen --work OUT/work --target OUT/hf/target
        Greedy continuations of random training windows (drafter training data) and of held-out
        windows (drafter evaluation data, generated in fp32), written to WORK/gen_{train,heldout}.pt.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from common import (BOS_ID, EOS_ID, count_params, Schedule, device_and_autocast, env_info, exact_fp32, load_target,
                    load_tokens, log, make_adamw, plot_curves, q8_0_bytes, seed_all, softcap, sync, write_json)
import layout


def target_config(a, vocab_size):
    from transformers import Gemma4TextConfig
    assert a.layers % 6 == 0, "layers must be a multiple of 6 (5 sliding : 1 full)"
    layer_types = (["sliding_attention"] * 5 + ["full_attention"]) * (a.layers // 6)
    return Gemma4TextConfig(
        vocab_size=vocab_size, hidden_size=a.hidden, intermediate_size=a.ffn, num_hidden_layers=a.layers,
        num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, head_dim=a.head_dim,
        global_head_dim=a.global_head_dim, num_global_key_value_heads=a.global_kv_heads,
        hidden_activation="gelu_pytorch_tanh", max_position_embeddings=4096, initializer_range=0.02,
        rms_norm_eps=1e-6, use_cache=True, pad_token_id=0, eos_token_id=1, bos_token_id=2,
        tie_word_embeddings=True,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                            "rope_theta": 1000000.0}},
        attention_bias=False, attention_dropout=0.0, sliding_window=a.window, layer_types=layer_types,
        final_logit_softcapping=30.0, use_bidirectional_attention=None, vocab_size_per_layer_input=0,
        hidden_size_per_layer_input=0, attention_k_eq_v=True, num_kv_shared_layers=0, enable_moe_block=False,
        use_double_wide_mlp=False, num_experts=None, top_k_experts=None, moe_intermediate_size=None,
    )


def sample_windows(stream, n, T, gen):
    """n windows of T tokens from the token stream, each starting with BOS (position 0 replaced)."""
    starts = torch.randint(0, stream.numel() - T, (n,), generator=gen, device="cpu").to(stream.device)
    ids = stream[starts[:, None] + torch.arange(T, device=stream.device)]
    ids[:, 0] = BOS_ID
    return ids


def eval_windows(stream, T):
    """Consecutive windows predicting every held-out token once: window k covers stream
    [k(T-1), k(T-1)+T), position 0 set to BOS, loss on positions 1..T-1."""
    n = (stream.numel() - 1) // (T - 1)
    idx = torch.arange(n, device=stream.device)[:, None] * (T - 1) + torch.arange(T, device=stream.device)
    ids = stream[idx]
    ids[:, 0] = BOS_ID
    return ids


def lm_loss(model, ids, reduction="mean"):
    h = model.model(input_ids=ids, use_cache=False).last_hidden_state
    logits = softcap(F.linear(h, model.model.embed_tokens.weight).float(), model.config.final_logit_softcapping)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction=reduction)


@torch.no_grad()
def heldout_loss(model, windows, batch, autocast):
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, windows.shape[0], batch):
        w = windows[i:i + batch]
        with autocast():
            tot += lm_loss(model, w, reduction="sum").item()
        n += w[:, 1:].numel()
    model.train()
    return tot / max(n, 1), n


def save_hf_folder(model, out: Path, tok_dir: Path):
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tok_dir / f, out / f)


def greedy(model, prompts, n_new, batch, autocast):
    """Greedy continuation of equal-length prompts (EOS ignored: exactly n_new tokens)."""
    outs = []
    for i in range(0, prompts.shape[0], batch):
        p = prompts[i:i + batch]
        with autocast():
            o = model.generate(input_ids=p, attention_mask=torch.ones_like(p), max_new_tokens=n_new,
                               min_new_tokens=n_new, do_sample=False, eos_token_id=None, pad_token_id=0,
                               use_cache=True)
        assert o.shape[1] == p.shape[1] + n_new, o.shape
        outs.append(o)
    return torch.cat(outs)


def cmd_train(a):
    t_start = time.time()
    seed_all(a.seed)
    dev, autocast = device_and_autocast(a.cpu)
    from tokenizers import Tokenizer
    from transformers import Gemma4ForCausalLM

    tok = Tokenizer.from_file(str(a.work / "tokenizer" / "tokenizer.json"))
    V = tok.get_vocab_size()
    cfg = target_config(a, V)
    model = Gemma4ForCausalLM(cfg).to(dev)
    model.train()
    n_params = count_params(model)
    log(f"target: {n_params / 1e6:.2f} M parameters, layer types {cfg.layer_types}, device {dev}")

    train = load_tokens(a.work, "train")["ids"].to(dev).long()
    held = load_tokens(a.work, "heldout")["ids"].to(dev).long()
    tokens_per_step = a.batch * a.seq
    steps = min(a.max_steps, math.ceil(a.max_epochs * train.numel() / tokens_per_step))
    log(f"target: {train.numel()} train tokens; {steps} steps x {tokens_per_step} tokens = "
        f"{steps * tokens_per_step / train.numel():.2f} epochs; time cap {a.max_seconds}s")
    held_windows = eval_windows(held, a.seq)
    probe = held_windows[: a.eval_windows]
    opt = make_adamw(model, a.lr, a.wd, dev)
    gen = torch.Generator().manual_seed(a.seed)
    curve, held_curve = [], []
    sched = Schedule(steps, a.max_seconds, a.lr, a.warmup)
    t0 = sched.t0
    step = 0
    while not sched.done(step):
        lr = sched.lr(step)
        for g in opt.param_groups:
            g["lr"] = lr
        ids = sample_windows(train, a.batch, a.seq, gen)
        with autocast():
            loss = lm_loss(model, ids)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        last = sched.done(step + 1)
        if step % a.log_every == 0 or last:
            lv = loss.item()
            curve.append((step, lv))
            el = time.time() - t0
            log(f"target step {step}/{steps} loss {lv:.4f} gnorm {gn.item():.2f} lr {lr:.2e} "
                f"{(step + 1) * tokens_per_step / max(el, 1e-9) / 1e3:.0f}k tok/s")
        if (step % a.eval_every == 0 and step > 0) or last:
            hl, _ = heldout_loss(model, probe, a.batch, autocast)
            held_curve.append((step, hl))
            log(f"target step {step}: held-out probe loss {hl:.4f} (ppl {math.exp(hl):.2f})")
        step += 1
    capped = sched.time_limited
    if capped:
        log(f"target: time budget reached after {step} of {steps} steps (LR schedule followed time)")
    sync(dev)
    train_seconds = time.time() - t0
    model.eval()

    # Final held-out evaluation in fp32 over every held-out token.
    with exact_fp32():
        hl, n_pred = heldout_loss(model, held_windows, a.batch, nullcontext)
    man = json.loads((a.work / "metrics_tokenizer.json").read_text())
    bpt = man["splits"]["heldout"]["bytes_per_token"]
    log(f"target: held-out loss {hl:.4f} nats/token, perplexity {math.exp(hl):.3f} over {n_pred} tokens "
        f"(~{hl / math.log(2) / bpt:.3f} bits/byte)")

    # Samples.
    samples = {}
    prompts = {"fibonacci": "def fibonacci(n):\n", "class": "class Stack:\n    def __init__(self):\n"}
    first_held = json.loads((a.work / "corpus.json").read_text())["heldout"][0]
    hs = held[: a.sample_prompt_tokens]
    for name, text in prompts.items():
        ids = torch.tensor([tok.encode(text, add_special_tokens=True).ids], device=dev)
        out = greedy(model, ids, a.sample_tokens, 1, nullcontext)
        samples[name] = {"prompt": text, "completion": tok.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=False)}
    out = greedy(model, hs[None], a.sample_tokens, 1, nullcontext)
    samples["heldout:" + first_held] = {"prompt": tok.decode(hs.tolist()[1:]),
                                        "completion": tok.decode(out[0, hs.numel():].tolist(), skip_special_tokens=False)}
    for k, v in samples.items():
        log(f"target sample [{k}]:\n{v['prompt']}\u2588{v['completion']}")

    save_hf_folder(model, a.out, a.work / "tokenizer")
    problems = layout.check_hf_folder(a.out, "dense")
    if problems:
        raise SystemExit(f"target folder does not have the fixture layout: {problems}")
    sd = model.state_dict()
    sd.pop("lm_head.weight", None)
    plot_curves(a.curves / "target_loss.png", "target: train / held-out loss",
                {"train": curve, "held-out probe": held_curve}, ylabel="cross-entropy (nats/token)")
    write_json(a.work / "metrics_target.json", {
        "seed": a.seed, "params": n_params, "q8_0_bytes_estimate": q8_0_bytes(sd),
        "config": {k: getattr(a, k) for k in ("layers", "hidden", "ffn", "heads", "kv_heads", "head_dim",
                                               "global_head_dim", "global_kv_heads", "window", "seq", "batch",
                                               "lr", "wd", "warmup", "clip", "max_epochs", "max_steps")},
        "vocab_size": V, "steps_planned": steps, "steps_done": step, "time_limited": capped,
        "epochs": step * tokens_per_step / train.numel(), "train_tokens": int(train.numel()),
        "train_seconds": round(train_seconds, 1),
        "final_train_loss": curve[-1][1] if curve else None,
        "heldout_loss": hl, "heldout_perplexity": math.exp(hl), "heldout_tokens": n_pred,
        "heldout_bits_per_byte_approx": hl / math.log(2) / bpt,
        "heldout_probe_curve": held_curve, "train_curve": curve, "samples": samples,
        "stage_seconds": round(time.time() - t_start, 1), "env": env_info(),
    })


def cmd_gen(a):
    t_start = time.time()
    seed_all(a.seed + 1)
    dev, autocast = device_and_autocast(a.cpu)
    model = load_target(a.target, dev)
    gen = torch.Generator().manual_seed(a.seed + 1)
    stats = {}
    for split, n, plens, ctx in (("train", a.n_train, a.train_prompt_lens, autocast),
                                 ("heldout", a.n_heldout, [a.heldout_prompt_len], exact_fp32)):
        stream = load_tokens(a.work, split)["ids"].to(dev).long()
        per = math.ceil(n / len(plens))
        all_ids, all_p = [], []
        t0 = time.time()
        for P in plens:
            prompts = sample_windows(stream, per, P, gen)
            out = greedy(model, prompts, a.seq - P, a.gen_batch, ctx)
            all_ids.append(out.int().cpu())
            all_p += [P] * out.shape[0]
        ids = torch.cat(all_ids)[:n]
        pl = torch.tensor(all_p[:n], dtype=torch.int32)
        torch.save({"ids": ids, "prompt_len": pl}, a.work / f"gen_{split}.pt")
        gen_region = torch.arange(a.seq)[None] >= pl[:, None].long()
        eos_frac = ((ids == EOS_ID) & gen_region).any(1).float().mean().item()
        stats[split] = {"sequences": ids.shape[0], "seq_len": a.seq, "prompt_lens": plens,
                        "generated_tokens": int(gen_region.sum()), "frac_with_eos": eos_frac,
                        "seconds": round(time.time() - t0, 1),
                        "precision": "bf16 autocast" if ctx is autocast and dev.type == "cuda" else "fp32"}
        log(f"gen {split}: {ids.shape[0]} x {a.seq} tokens in {time.time() - t0:.1f}s (EOS in {eos_frac:.1%})")
    write_json(a.work / "metrics_gen.json", {"seed": a.seed + 1, **stats, "stage_seconds": round(time.time() - t_start, 1)})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--work", required=True, type=Path)
    t.add_argument("--out", required=True, type=Path)
    t.add_argument("--curves", required=True, type=Path)
    t.add_argument("--seed", type=int, default=1234)
    t.add_argument("--layers", type=int, default=6)
    t.add_argument("--hidden", type=int, default=256)
    t.add_argument("--ffn", type=int, default=1024)
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--kv-heads", type=int, default=2)
    t.add_argument("--head-dim", type=int, default=64)
    t.add_argument("--global-head-dim", type=int, default=128)
    t.add_argument("--global-kv-heads", type=int, default=1)
    t.add_argument("--window", type=int, default=128)
    t.add_argument("--seq", type=int, default=1024)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--wd", type=float, default=0.1)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--clip", type=float, default=1.0)
    t.add_argument("--max-epochs", type=float, default=12.0)
    t.add_argument("--max-steps", type=int, default=3000)
    t.add_argument("--max-seconds", type=float, default=150.0)
    t.add_argument("--log-every", type=int, default=50)
    t.add_argument("--eval-every", type=int, default=200)
    t.add_argument("--eval-windows", type=int, default=64)
    t.add_argument("--sample-tokens", type=int, default=96)
    t.add_argument("--sample-prompt-tokens", type=int, default=64)
    t.add_argument("--cpu", action="store_true")
    g = sub.add_parser("gen")
    g.add_argument("--work", required=True, type=Path)
    g.add_argument("--target", required=True, type=Path)
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--seq", type=int, default=512)
    g.add_argument("--n-train", type=int, default=16384)
    g.add_argument("--train-prompt-lens", type=int, nargs="+", default=[48, 160])
    g.add_argument("--n-heldout", type=int, default=128)
    g.add_argument("--heldout-prompt-len", type=int, default=128)
    g.add_argument("--gen-batch", type=int, default=8192)
    g.add_argument("--cpu", action="store_true")
    a = ap.parse_args()
    {"train": cmd_train, "gen": cmd_gen}[a.cmd](a)


if __name__ == "__main__":
    main()

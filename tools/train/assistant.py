"""The Gemma 4 MTP assistant ("Gemma4AssistantForCausalLM", model_type gemma4_assistant) as a
standalone PyTorch module, its training against the frozen target, and its evaluation.

Module (state_dict names/shapes and config.json as shared/fixtures/hf/assistant):
    in     = concat(E_target[tok] * sqrt(H_target), h_prev)             [2 H_target]
    x      = pre_projection(in)                                        [H]
    4 Gemma 4 decoder layers whose attention is query-only: q = RoPE(q_norm(q_proj(norm(x)))) at
           the round's position, K/V = the target's cache (sliding layers: the target's last
           sliding layer, seeing the last window+1 positions; the full layer: the target's last
           full layer, every position), scale 1, then o_proj, post/pre/post norms, GELU-tanh MLP,
           layer_scalar
    h      = norm(x);  logits = h @ embed_tokens^T (own tied head, no softcap)
    h_next = post_projection(h)  -> h_prev of the next draft step (position unchanged)

Training (standard MTP recipe with the target frozen): for every anchor t of a sequence the
first step gets (x_t, target post-norm hidden at t-1) and predicts the target's greedy token
after t; step k (k < gamma) is fed the true token x_{t+k} (teacher forcing — on target-greedy
sequences that is exactly the drafted token whenever the earlier drafts were right) and the
previous step's h_next, and predicts the target's argmax at t+k. Loss: cross-entropy against the
target's argmax labels, step k weighted decay^k. Data: target-greedy continuations of training
windows (target.py gen) plus raw training windows labelled with the target's argmax.

    python assistant.py train --work OUT/work --target OUT/hf/target --out OUT/hf/assistant --curves OUT/curves
    python assistant.py check-fixture --fixtures ../shared/fixtures   (module vs the transformers reference)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from common import (BOS_ID, RMSNorm, TargetRunner, acceptance_summary, count_params, Schedule, device_and_autocast,
                    exact_fp32,
                    env_info, load_target, load_tokens, log, make_adamw, plot_curves, q8_0_bytes, rope_cos_sin,
                    rope_inv_freq, rotate_half, seed_all, sync, write_json)
import layout


# --------------------------------------------------------------------------------------------
# Config (the fixture's config.json form)

def assistant_config(target_cfg: dict, hidden: int, ffn: int, heads: int, transformers_version: str) -> dict:
    """config.json for an assistant of width `hidden` drafting for `target_cfg` (a target
    config.json dict). Head dims, KV heads, window and RoPE follow the target (the layers read
    its caches); keys and order as the fixture."""
    full = [i for i, t in enumerate(target_cfg["layer_types"]) if t == "full_attention"][-1]
    plc = target_cfg["per_layer_config"][str(full)] if str(full) in target_cfg["per_layer_config"] \
        else target_cfg["per_layer_config"][full]
    text = {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attention_k_eq_v": target_cfg["attention_k_eq_v"],
        "bos_token_id": target_cfg["bos_token_id"],
        "enable_moe_block": False,
        "eos_token_id": target_cfg["eos_token_id"],
        "final_logit_softcapping": target_cfg["final_logit_softcapping"],
        "head_dim": target_cfg["head_dim"],
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": hidden,
        "hidden_size_per_layer_input": 0,
        "initializer_range": 0.02,
        "intermediate_size": ffn,
        "layer_types": ["sliding_attention"] * 3 + ["full_attention"],
        "max_position_embeddings": target_cfg["max_position_embeddings"],
        "model_type": "gemma4_text",
        "moe_intermediate_size": None,
        "num_attention_heads": heads,
        "num_experts": None,
        "num_hidden_layers": 4,
        "num_key_value_heads": target_cfg["num_key_value_heads"],
        "num_kv_shared_layers": 4,
        "pad_token_id": target_cfg["pad_token_id"],
        "per_layer_config": {"3": dict(plc)},
        "rms_norm_eps": target_cfg["rms_norm_eps"],
        "rope_parameters": target_cfg["rope_parameters"],
        "sliding_window": target_cfg["sliding_window"],
        "tie_word_embeddings": True,
        "top_k_experts": None,
        "use_bidirectional_attention": None,
        "use_cache": True,
        "use_double_wide_mlp": False,
        "vocab_size": target_cfg["vocab_size"],
        "vocab_size_per_layer_input": 0,
    }
    return {
        "architectures": ["Gemma4AssistantForCausalLM"],
        "backbone_hidden_size": target_cfg["hidden_size"],
        "centroid_intermediate_top_k": 32,
        "dtype": "float32",
        "model_type": "gemma4_assistant",
        "num_centroids": 2048,
        "text_config": text,
        "tie_word_embeddings": True,
        "transformers_version": transformers_version,
        "use_ordered_embeddings": False,
    }


def generation_config(target_cfg: dict, transformers_version: str) -> dict:
    return {
        "_from_model_config": True,
        "bos_token_id": target_cfg["bos_token_id"],
        "eos_token_id": target_cfg["eos_token_id"],
        "num_assistant_tokens": 4,
        "num_assistant_tokens_schedule": "constant",
        "output_attentions": False,
        "output_hidden_states": False,
        "pad_token_id": target_cfg["pad_token_id"],
        "transformers_version": transformers_version,
        "use_cache": True,
    }


# --------------------------------------------------------------------------------------------
# Module

class MLP(nn.Module):
    def __init__(self, hidden, ffn):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, ffn, bias=False)
        self.up_proj = nn.Linear(hidden, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class QOnlyAttention(nn.Module):
    def __init__(self, hidden, heads, head_dim, eps):
        super().__init__()
        self.head_dim = head_dim
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.q_norm = RMSNorm(head_dim, eps)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)

    def forward(self, x, cos, sin, k, v, mask):
        B, Q, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, Q, -1, self.head_dim))
        q = (q * cos[:, :, None] + rotate_half(q) * sin[:, :, None]).transpose(1, 2)
        k, v = k.to(q.dtype), v.to(q.dtype)
        rep = q.shape[1] // k.shape[1]
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        return self.o_proj(o.transpose(1, 2).reshape(B, Q, -1))


class Layer(nn.Module):
    def __init__(self, hidden, ffn, heads, head_dim, eps):
        super().__init__()
        self.input_layernorm = RMSNorm(hidden, eps)
        self.self_attn = QOnlyAttention(hidden, heads, head_dim, eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps)
        self.pre_feedforward_layernorm = RMSNorm(hidden, eps)
        self.mlp = MLP(hidden, ffn)
        self.post_feedforward_layernorm = RMSNorm(hidden, eps)
        self.register_buffer("layer_scalar", torch.ones(1))

    def forward(self, x, cos, sin, k, v, mask):
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, k, v, mask))
        x = x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        return x * self.layer_scalar


class Inner(nn.Module):
    def __init__(self, tc):
        super().__init__()
        self.embed_tokens = nn.Embedding(tc["vocab_size"], tc["hidden_size"])
        layers = []
        for i, t in enumerate(tc["layer_types"]):
            plc = tc["per_layer_config"].get(str(i), {}) if t == "full_attention" else {}
            hd = plc.get("head_dim", tc["head_dim"])
            layers.append(Layer(tc["hidden_size"], tc["intermediate_size"], tc["num_attention_heads"], hd, tc["rms_norm_eps"]))
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(tc["hidden_size"], tc["rms_norm_eps"])


class Gemma4Assistant(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        tc = cfg["text_config"]
        assert not cfg["use_ordered_embeddings"], "the centroid head is not implemented (the fixture's dense head is)"
        self.layer_types = list(tc["layer_types"])
        self.window = tc["sliding_window"]
        self.model = Inner(tc)
        hb = cfg["backbone_hidden_size"]
        self.pre_projection = nn.Linear(2 * hb, tc["hidden_size"], bias=False)
        self.post_projection = nn.Linear(tc["hidden_size"], hb, bias=False)
        for t in set(self.layer_types):
            rp = tc["rope_parameters"][t]
            i = self.layer_types.index(t)
            hd = self.model.layers[i].self_attn.head_dim
            inv = rope_inv_freq(hd, rp["rope_theta"], rp["rope_type"], rp.get("partial_rotary_factor", 1.0))
            self.register_buffer(f"inv_freq_{t}", inv, persistent=False)

    def init_weights(self, std=0.02):
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, std)

    def forward(self, inputs_embeds, positions, kv, masks):
        """inputs_embeds [B, Q, 2 H_target]; positions [B, Q]; kv[type] = (K, V) [B, kv_heads, T, hd];
        masks[type] bool [B or 1, 1, Q, T]. Returns logits [B, Q, V] and h_next [B, Q, H_target]."""
        x = self.pre_projection(inputs_embeds)
        cs = {t: rope_cos_sin(positions, getattr(self, f"inv_freq_{t}"), x.dtype) for t in set(self.layer_types)}
        for layer, t in zip(self.model.layers, self.layer_types):
            x = layer(x, cs[t][0], cs[t][1], kv[t][0], kv[t][1], masks[t])
        h = self.model.norm(x)
        return F.linear(h, self.model.embed_tokens.weight), self.post_projection(h)

    def state_dict_hf(self):
        return {k: v.detach().float().contiguous().cpu() for k, v in self.state_dict().items()}


def anchor_masks(T: int, window: int, device, first_anchor: int = 1):
    """Visibility of the target's KV for queries anchored at t = first_anchor..T-1:
    full layers keys j <= t-1; sliding layers additionally j >= t-1-window (window+1 keys)."""
    t = torch.arange(first_anchor, T, device=device)[:, None]
    j = torch.arange(T, device=device)[None]
    full = j <= t - 1
    sliding = full & (j >= t - 1 - window)
    return {"full_attention": full[None, None], "sliding_attention": sliding[None, None]}


def mtp_forward(assistant, runner_out, ids, embed_w, gamma, masks):
    """Unrolled gamma-step MTP over every anchor t=1..T-1. Returns per-step logits list
    ([B, T-1, V] each) and per-step labels/valid ([B, T-1])."""
    B, T = ids.shape
    hb = embed_w.shape[1]
    h_prev = runner_out["hidden"][:, :-1]
    am = runner_out["argmax"]
    pos = torch.arange(1, T, device=ids.device)[None].expand(B, -1)
    out = []
    pad = torch.zeros(B, gamma, dtype=ids.dtype, device=ids.device)
    ids_p = torch.cat([ids, pad], 1)
    am_p = torch.cat([am, pad], 1)
    tpos = torch.arange(1, T, device=ids.device)
    for k in range(gamma):
        tok = ids_p[:, 1 + k:T + k]
        label = am_p[:, 1 + k:T + k]
        valid = (tpos + k <= T - 1)[None].expand(B, -1)
        emb = F.embedding(tok, embed_w) * math.sqrt(hb)
        logits, h_next = assistant(torch.cat([emb.to(h_prev.dtype), h_prev], -1), pos, runner_out["kv"], masks)
        out.append((logits, label, valid))
        h_prev = h_next
    return out


# --------------------------------------------------------------------------------------------
# Data

class Batches:
    """Training batches: target-greedy sequences (gen_train.pt) mixed with raw train windows."""

    def __init__(self, work, dev, batch, raw_frac, seed):
        g = torch.load(Path(work) / "gen_train.pt")
        self.gen = g["ids"].to(dev).long()
        self.T = self.gen.shape[1]
        self.raw = load_tokens(work, "train")["ids"].to(dev).long()
        self.n_raw = int(round(batch * raw_frac))
        self.n_gen = batch - self.n_raw
        self.g = torch.Generator().manual_seed(seed)
        self.dev = dev

    def next(self):
        parts = []
        if self.n_gen:
            idx = torch.randint(0, self.gen.shape[0], (self.n_gen,), generator=self.g).to(self.dev)
            parts.append(self.gen[idx])
        if self.n_raw:
            s = torch.randint(0, self.raw.numel() - self.T, (self.n_raw,), generator=self.g).to(self.dev)
            w = self.raw[s[:, None] + torch.arange(self.T, device=self.dev)]
            w[:, 0] = BOS_ID
            parts.append(w)
        return torch.cat(parts)


# --------------------------------------------------------------------------------------------
# Evaluation: per-position accuracy and simulated greedy speculative rounds on held-out
# target-greedy sequences, everything in fp32.

@torch.no_grad()
def evaluate(assistant, runner, work, dev, gamma, max_seqs=None, batch=16):
    g = torch.load(Path(work) / "gen_heldout.pt")
    ids_all, plen = g["ids"].long(), g["prompt_len"].tolist()
    if max_seqs:
        ids_all, plen = ids_all[:max_seqs], plen[:max_seqs]
    T = ids_all.shape[1]
    masks = anchor_masks(T, assistant.window, dev)
    corr, vals, tok_match = [], [], []
    assistant.eval()
    for i in range(0, ids_all.shape[0], batch):
        ids = ids_all[i:i + batch].to(dev)
        r = runner.run(ids)
        steps = mtp_forward(assistant, r, ids, runner.embed_weight(), gamma, masks)
        c = torch.stack([(lg.argmax(-1) == lb) for lg, lb, _ in steps], -1)
        v = torch.stack([vd for _, _, vd in steps], -1)
        # anchors are t = 1..T-1; put them at index t (row 0 unused)
        corr.append(torch.cat([torch.zeros_like(c[:, :1]), c], 1).cpu())
        vals.append(torch.cat([torch.zeros_like(v[:, :1]), v], 1).cpu())
        # sanity: in the generated region the fp32 target argmax must reproduce the greedy tokens
        gen_pos = torch.arange(T - 1, device=dev)[None] >= torch.tensor(plen[i:i + batch], device=dev)[:, None] - 1
        tok_match.append(((r["argmax"][:, :-1] == ids[:, 1:]) & gen_pos).sum().item() / gen_pos.sum().item())
    assistant.train()
    corr, vals = torch.cat(corr), torch.cat(vals)
    # Only anchors in the generated region count (the runtime drafts after the prompt).
    gen_region = torch.arange(T)[None] >= torch.tensor(plen)[:, None]
    vals = vals & gen_region[..., None]
    res = acceptance_summary(corr, vals, plen, [T] * len(plen), gamma)
    res["sequences"] = len(plen)
    res["target_argmax_equals_greedy_tokens"] = sum(tok_match) / len(tok_match)
    return res


# --------------------------------------------------------------------------------------------

def cmd_train(a):
    t_start = time.time()
    seed_all(a.seed)
    dev, autocast = device_and_autocast(a.cpu)
    import transformers
    target = load_target(a.target, dev)
    tcfg = json.loads((Path(a.target) / "config.json").read_text())
    runner = TargetRunner(target, need_kv=True)
    cfg = assistant_config(tcfg, a.hidden, a.ffn, a.heads, transformers.__version__)
    model = Gemma4Assistant(cfg).to(dev)
    model.init_weights()
    E = runner.embed_weight()
    if a.hidden == tcfg["hidden_size"] and not a.no_embed_init:
        model.model.embed_tokens.weight.data.copy_(E)
    n_params = count_params(model)
    log(f"assistant: {n_params / 1e6:.2f} M parameters, gamma {a.gamma}, device {dev}")

    data = Batches(a.work, dev, a.batch, a.raw_frac, a.seed)
    T = data.T
    masks = anchor_masks(T, model.window, dev)
    opt = make_adamw(model, a.lr, a.wd, dev)
    wk = torch.tensor([a.step_decay ** k for k in range(a.gamma)])
    wk = (wk / wk.sum()).tolist()
    curve, step_curves, eval_curve = [], {k: [] for k in range(a.gamma)}, []
    sched = Schedule(a.steps, a.max_seconds, a.lr, a.warmup)
    t0 = sched.t0
    step = 0
    while not sched.done(step):
        lr = sched.lr(step)
        for g in opt.param_groups:
            g["lr"] = lr
        ids = data.next()
        with autocast():
            r = runner.run(ids)
            outs = mtp_forward(model, r, ids, E, a.gamma, masks)
            losses = []
            for lg, lb, vd in outs:
                ce = F.cross_entropy(lg.float().reshape(-1, lg.shape[-1]), lb.reshape(-1), reduction="none")
                vd = vd.reshape(-1).float()
                losses.append((ce * vd).sum() / vd.sum())
            loss = sum(w * l for w, l in zip(wk, losses))
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        last = sched.done(step + 1)
        if step % a.log_every == 0 or last:
            ls = [l.item() for l in losses]
            curve.append((step, loss.item()))
            for k in range(a.gamma):
                step_curves[k].append((step, ls[k]))
            log(f"assistant step {step}/{a.steps} loss {loss.item():.4f} per-step {[round(x, 3) for x in ls]} "
                f"gnorm {gn.item():.2f} lr {lr:.2e} {(time.time() - t0) / (step + 1) * 1e3:.0f} ms/step")
        if a.eval_every and step > 0 and step % a.eval_every == 0:
            ev = evaluate(model, runner, a.work, dev, a.gamma, max_seqs=a.eval_seqs_during)
            eval_curve.append((step, ev["simulated_acceptance_length"]))
            log(f"assistant step {step}: held-out acceptance length {ev['simulated_acceptance_length']:.3f} "
                f"per-position {[round(x, 3) for x in ev['per_position_accuracy']]}")
        step += 1
    capped = sched.time_limited
    if capped:
        log(f"assistant: time budget reached after {step} of {a.steps} steps (LR schedule followed time)")
    sync(dev)
    train_seconds = time.time() - t0

    with exact_fp32():
        ev = evaluate(model, runner, a.work, dev, a.gamma)
    eval_curve.append((step, ev["simulated_acceptance_length"]))
    log(f"assistant: held-out (fp32) acceptance length {ev['simulated_acceptance_length']:.3f} over "
        f"{ev['simulated_rounds']} rounds; per-position accuracy {[round(x, 3) for x in ev['per_position_accuracy']]}; "
        f"prefix {[round(x, 3) for x in ev['per_position_prefix_acceptance']]}")

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict_hf()
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    write_json(out / "config.json", cfg)
    write_json(out / "generation_config.json", generation_config(tcfg, transformers.__version__))
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (out / f).write_bytes((Path(a.target) / f).read_bytes())
    problems = layout.check_hf_folder(out, "assistant")
    if problems:
        raise SystemExit(f"assistant folder does not have the fixture layout: {problems}")
    plot_curves(Path(a.curves) / "assistant_loss.png", "MTP assistant: train loss per draft step",
                {f"step {k + 1}": v for k, v in step_curves.items()} | {"weighted": curve},
                ylabel="cross-entropy vs target argmax")
    plot_curves(Path(a.curves) / "assistant_acceptance.png", "MTP assistant: held-out acceptance length",
                {"acceptance length (gamma=%d)" % a.gamma: eval_curve}, ylabel="tokens per round")
    write_json(Path(a.work) / "metrics_assistant.json", {
        "seed": a.seed, "params": n_params, "q8_0_bytes_estimate": q8_0_bytes(sd),
        "config": {k: getattr(a, k) for k in ("hidden", "ffn", "heads", "gamma", "batch", "steps", "lr", "wd",
                                               "warmup", "clip", "step_decay", "raw_frac")},
        "steps_done": step, "time_limited": capped, "train_seconds": round(train_seconds, 1),
        "final_loss": curve[-1][1] if curve else None, "final_per_step_loss": {k + 1: v[-1][1] for k, v in step_curves.items() if v},
        "train_curve": curve, "eval_curve": eval_curve, "heldout": ev,
        "stage_seconds": round(time.time() - t_start, 1), "env": env_info(),
    })


# --------------------------------------------------------------------------------------------
# Reproduction of the fixture reference (shared/fixtures/assistant*.ref.safetensors)

@torch.no_grad()
def check_fixture(fixtures: Path, name: str = "assistant"):
    hf = fixtures / "hf"
    cfg = json.loads((hf / "assistant" / "config.json").read_text())
    model = Gemma4Assistant(cfg)
    weights = load_file(str(hf / "assistant" / "model.safetensors"))
    if name == "assistant_tuned":
        raise SystemExit("assistant_tuned ships no HF folder; only the GGUF")
    model.load_state_dict(weights, strict=True)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in weights.items()}
    names_equal = ours == theirs
    dense = load_file(str(hf / "dense" / "model.safetensors"))
    E = dense["model.embed_tokens.weight"]
    ref = load_file(str(fixtures / f"{name}.ref.safetensors"))
    hb = cfg["backbone_hidden_size"]
    kv = {t: (ref[f"target_shared_k_{t}"][None], ref[f"target_shared_v_{t}"][None])
          for t in ("sliding_attention", "full_attention")}
    T = kv["full_attention"][0].shape[2]
    pos = int(ref["step_position"][0])
    assert pos == T, (pos, T)
    j = torch.arange(T)
    w = cfg["text_config"]["sliding_window"]
    masks = {"full_attention": (j <= pos - 1)[None, None, None],
             "sliding_attention": ((j <= pos - 1) & (j >= pos - 1 - w))[None, None, None]}
    positions = torch.tensor([[pos]])
    res = {"per_step_independent": [], "chained": []}
    h_prev = ref["step_in_h_prev"][0][None, None]
    tok = int(ref["step_in_token"][0])
    for s in range(ref["step_logits"].shape[0]):
        # independent: the reference's inputs for step s
        x = torch.cat([E[ref["step_in_token"][s].long()][None, None] * math.sqrt(hb), ref["step_in_h_prev"][s][None, None]], -1)
        lg, hn = model(x, positions, kv, masks)
        res["per_step_independent"].append({
            "logits_rel_l2": (lg[0, 0] - ref["step_logits"][s]).norm().item() / ref["step_logits"][s].norm().item(),
            "logits_max_rel": ((lg[0, 0] - ref["step_logits"][s]).abs().max() / ref["step_logits"][s].abs().max()).item(),
            "h_next_rel_l2": (hn[0, 0] - ref["step_h_next"][s]).norm().item() / ref["step_h_next"][s].norm().item(),
            "h_next_max_rel": ((hn[0, 0] - ref["step_h_next"][s]).abs().max() / ref["step_h_next"][s].abs().max()).item(),
            "argmax_equal": int(lg[0, 0].argmax()) == int(ref["step_argmax"][s]),
        })
        # chained: our own argmax and h_next feed the next step
        x = torch.cat([E[tok][None, None] * math.sqrt(hb), h_prev], -1)
        lg, hn = model(x, positions, kv, masks)
        res["chained"].append({"argmax": int(lg[0, 0].argmax()), "ref": int(ref["step_argmax"][s]),
                               "logits_rel_l2": (lg[0, 0] - ref["step_logits"][s]).norm().item() / ref["step_logits"][s].norm().item()})
        tok, h_prev = int(lg[0, 0].argmax()), hn
    res["state_dict_names_shapes_equal_fixture"] = names_equal
    res["max_logits_rel_l2"] = max(r["logits_rel_l2"] for r in res["per_step_independent"])
    res["max_logits_max_rel"] = max(r["logits_max_rel"] for r in res["per_step_independent"])
    res["max_h_next_rel_l2"] = max(r["h_next_rel_l2"] for r in res["per_step_independent"])
    res["max_h_next_max_rel"] = max(r["h_next_max_rel"] for r in res["per_step_independent"])
    res["all_argmax_equal"] = all(r["argmax_equal"] for r in res["per_step_independent"]) and \
        all(r["argmax"] == r["ref"] for r in res["chained"])
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--work", required=True, type=Path)
    t.add_argument("--target", required=True, type=Path)
    t.add_argument("--out", required=True, type=Path)
    t.add_argument("--curves", required=True, type=Path)
    t.add_argument("--seed", type=int, default=1234)
    t.add_argument("--hidden", type=int, default=256)
    t.add_argument("--ffn", type=int, default=512)
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--gamma", type=int, default=4)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--raw-frac", type=float, default=0.5)
    t.add_argument("--steps", type=int, default=4000)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--wd", type=float, default=0.01)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--clip", type=float, default=1.0)
    t.add_argument("--step-decay", type=float, default=0.8)
    t.add_argument("--max-seconds", type=float, default=160.0)
    t.add_argument("--log-every", type=int, default=50)
    t.add_argument("--eval-every", type=int, default=500)
    t.add_argument("--eval-seqs-during", type=int, default=32)
    t.add_argument("--no-embed-init", action="store_true", help="do not start the head from the target's embedding")
    t.add_argument("--cpu", action="store_true")
    c = sub.add_parser("check-fixture")
    c.add_argument("--fixtures", required=True, type=Path)
    c.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if a.cmd == "train":
        cmd_train(a)
    else:
        res = check_fixture(a.fixtures)
        summary = {k: v for k, v in res.items() if k.startswith("max_") or k in ("all_argmax_equal", "state_dict_names_shapes_equal_fixture")}
        print(json.dumps(summary, indent=1))
        if a.json:
            write_json(a.json, res)
        ok = res["max_logits_rel_l2"] < 1e-4 and res["max_h_next_rel_l2"] < 1e-4 and res["all_argmax_equal"] and \
            res["state_dict_names_shapes_equal_fixture"]
        raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()

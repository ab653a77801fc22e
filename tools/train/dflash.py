"""The DFlash block-diffusion drafter (z-lab checkpoint layout, config.json `DFlashDraftModel` +
`dflash_config`, as shared/fixtures/hf/dflash) as a standalone PyTorch module, its training
against the frozen target, and its evaluation.

Module (the math of transformers' MuseGlimmerAssistantModel, the class behind the fixture):
    ctx   = hidden_norm(fc(concat of target layer outputs for target_layer_ids)) [C, H]
    block = E_target[[anchor, <mask> x (B-1)]] * input_embedding_scale           [B, H]
    per layer (Qwen3-style, pre-norm): h = input_layernorm(x);
        q = q_norm(q_proj(h)), k = k_norm(k_proj([ctx; h])), v = v_proj([ctx; h]);
        RoPE (theta rope_theta) at the real positions (context 0..C-1, block C..C+B-1);
        attention scale 1/sqrt(head_dim), non-causal over [context; block];
        x = x + o_proj(.); x = x + mlp(post_attention_layernorm(x)) (SiLU)
    out   = norm(x); logits = softcap(out @ E_target^T, final_logit_softcapping)
    drafts = argmax of rows 1..B-1.

Training (DFlash recipe, target frozen): random anchor positions per sequence; each block is
[x_t, <mask> x 15] at positions t..t+15 and sees the target features of positions < t plus its own
block; row i predicts the target's greedy token t+i (its argmax at t+i-1); cross-entropy weighted
exp(-(i-1)/gamma) (position-decayed, gamma 7 for block 16). Many blocks of a sequence share one
forward with a per-block mask. Data as for the assistant. Started by torchrun (WORLD_SIZE > 1),
training is data-parallel: one process per GPU, gradients averaged (common.DataParallel).

    python dflash.py train --work OUT/work --target OUT/hf/target --out OUT/hf/dflash --curves OUT/curves
    python dflash.py check-fixture --fixtures ../shared/fixtures
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

from common import (MASK_ID, DataParallel, RMSNorm, TargetRunner, acceptance_summary, count_params, Schedule,
                    device_and_autocast,
                    exact_fp32,
                    env_info, load_target, log, make_adamw, plot_curves, q8_0_bytes, rope_cos_sin, rope_inv_freq,
                    rotate_half, seed_all, softcap, sync, write_json)
from assistant import Batches
import layout


def dflash_config(target_cfg: dict, layers: int, heads: int, kv_heads: int, head_dim: int, ffn: int,
                  block: int, target_layer_ids) -> dict:
    """config.json in the z-lab layout (keys and order as the fixture)."""
    H = target_cfg["hidden_size"]
    return {
        "architectures": ["DFlashDraftModel"],
        "model_type": "qwen3",
        "hidden_size": H,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "max_position_embeddings": target_cfg["max_position_embeddings"],
        "hidden_act": "silu",
        "vocab_size": target_cfg["vocab_size"],
        "tie_word_embeddings": False,
        "attention_bias": False,
        "block_size": block,
        "num_target_layers": target_cfg["num_hidden_layers"],
        "layer_types": ["full_attention"] * layers,
        "use_sliding_window": False,
        "sliding_window": None,
        "dflash_config": {
            "mask_token_id": MASK_ID,
            "target_layer_ids": list(target_layer_ids),
            "block_size": block,
            "input_embedding_scale": float(math.sqrt(H)),
            "final_logit_softcapping": target_cfg["final_logit_softcapping"],
        },
        "bos_token_id": target_cfg["bos_token_id"],
        "eos_token_id": target_cfg["eos_token_id"],
        "pad_token_id": target_cfg["pad_token_id"],
        "torch_dtype": "float32",
    }


class MLP(nn.Module):
    def __init__(self, hidden, ffn):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, ffn, bias=False)
        self.up_proj = nn.Linear(hidden, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Attention(nn.Module):
    def __init__(self, hidden, heads, kv_heads, head_dim, eps):
        super().__init__()
        self.head_dim = head_dim
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)
        self.q_norm = RMSNorm(head_dim, eps)
        self.k_norm = RMSNorm(head_dim, eps)

    def forward(self, h, ctx, q_cs, k_cs, mask):
        B, Q, _ = h.shape
        kvh = torch.cat([ctx.to(h.dtype), h], 1)
        q = self.q_norm(self.q_proj(h).view(B, Q, -1, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(kvh).view(B, kvh.shape[1], -1, self.head_dim)).transpose(1, 2)
        v = self.v_proj(kvh).view(B, kvh.shape[1], -1, self.head_dim).transpose(1, 2)
        q = q * q_cs[0][:, None] + rotate_half(q) * q_cs[1][:, None]
        k = k * k_cs[0][:, None] + rotate_half(k) * k_cs[1][:, None]
        rep = q.shape[1] // k.shape[1]
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim ** -0.5)
        return self.o_proj(o.transpose(1, 2).reshape(B, Q, -1))


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.self_attn = Attention(c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"],
                                   c["head_dim"], c["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.mlp = MLP(c["hidden_size"], c["intermediate_size"])

    def forward(self, x, ctx, q_cs, k_cs, mask):
        x = x + self.self_attn(self.input_layernorm(x), ctx, q_cs, k_cs, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class DFlashDrafter(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        d = cfg["dflash_config"]
        H = cfg["hidden_size"]
        self.block = d["block_size"]
        self.mask_id = d["mask_token_id"]
        self.embed_scale = d["input_embedding_scale"]
        self.cap = d.get("final_logit_softcapping")
        self.target_layer_ids = list(d["target_layer_ids"])
        self.fc = nn.Linear(len(self.target_layer_ids) * H, H, bias=False)
        self.hidden_norm = RMSNorm(H, cfg["rms_norm_eps"])
        self.layers = nn.ModuleList([Layer(cfg) for _ in range(cfg["num_hidden_layers"])])
        self.norm = RMSNorm(H, cfg["rms_norm_eps"])
        self.register_buffer("inv_freq", rope_inv_freq(cfg["head_dim"], cfg["rope_theta"]), persistent=False)

    def init_weights(self, std=0.02):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, std)

    def encode_context(self, features):
        return self.hidden_norm(self.fc(features))

    def forward(self, block_embeds, ctx, q_pos, k_pos, mask):
        """block_embeds [B, Q, H] (already scaled); ctx [B, C, H] (encode_context output);
        q_pos [B, Q]; k_pos [B, C+Q]; mask bool [B, 1, Q, C+Q]. Returns normed hidden [B, Q, H]."""
        x = block_embeds
        q_cs = rope_cos_sin(q_pos, self.inv_freq, x.dtype)
        k_cs = rope_cos_sin(k_pos, self.inv_freq, x.dtype)
        for layer in self.layers:
            x = layer(x, ctx, q_cs, k_cs, mask)
        return self.norm(x)

    def logits(self, hidden, embed_w, cap=True):
        lg = F.linear(hidden, embed_w).float()
        return softcap(lg, self.cap) if cap else lg


def block_batch(ids, anchors, block, mask_id, ctx_lo=None):
    """Packs K blocks per sequence. anchors [B, K] (t >= 1). Returns block tokens [B, K*blk],
    query positions [B, K*blk], mask [B, 1, K*blk, T + K*blk] (context j < t_k, own block).
    ctx_lo [B, K] (training only): the block sees context positions ctx_lo <= j < t_k."""
    B, T = ids.shape
    K = anchors.shape[1]
    dev = ids.device
    off = torch.arange(block, device=dev)
    toks = torch.full((B, K, block), mask_id, dtype=ids.dtype, device=dev)
    toks[:, :, 0] = torch.gather(ids, 1, anchors)
    q_pos = (anchors[:, :, None] + off).reshape(B, K * block)
    ctx_vis = torch.arange(T, device=dev)[None, None, :] < anchors[:, :, None]            # [B, K, T]
    if ctx_lo is not None:
        ctx_vis &= torch.arange(T, device=dev)[None, None, :] >= ctx_lo[:, :, None]
    ctx_vis = ctx_vis[:, :, None, :].expand(B, K, block, T).reshape(B, K * block, T)
    bid = torch.arange(K, device=dev).repeat_interleave(block)
    own = (bid[:, None] == bid[None, :])[None].expand(B, -1, -1)
    mask = torch.cat([ctx_vis, own], -1)[:, None]
    k_pos = torch.cat([torch.arange(T, device=dev)[None].expand(B, -1), q_pos], 1)
    return toks.reshape(B, K * block), q_pos, k_pos, mask


def dflash_forward(model, features, ids, argmax, anchors, embed_w, ctx_lo=None):
    """Returns logits [B, K, blk-1, V] for rows 1.. and labels [B, K, blk-1] (target argmax at
    t+i-1) with validity [B, K, blk-1]."""
    B, T = ids.shape
    K = anchors.shape[1]
    blk = model.block
    toks, q_pos, k_pos, mask = block_batch(ids, anchors, blk, model.mask_id, ctx_lo)
    ctx = model.encode_context(features)
    emb = (F.embedding(toks, embed_w) * model.embed_scale).to(ctx.dtype)
    h = model(emb, ctx, q_pos, k_pos, mask).view(B, K, blk, -1)[:, :, 1:]
    lab_pos = anchors[:, :, None] + torch.arange(blk - 1, device=ids.device)              # t+i-1, i=1..blk-1
    valid = lab_pos <= T - 1
    labels = torch.gather(argmax, 1, lab_pos.clamp(max=T - 1).reshape(B, -1)).view(B, K, blk - 1)
    return model.logits(h, embed_w), labels, valid


def sample_anchors(B, T, K, blk, gen, dev, lo=1):
    """K distinct anchors per sequence in [lo, T-blk+1] (every label of the block exists)."""
    n = T - blk + 1 - lo + 1
    r = torch.rand(B, n, generator=gen)
    a = r.topk(min(K, n), dim=1).indices + lo
    return a.sort(1).values.to(dev)


@torch.no_grad()
def evaluate(model, runner, work, dev, max_seqs=None, chunk=64):
    g = torch.load(Path(work) / "gen_heldout.pt")
    ids_all, plen = g["ids"].long(), g["prompt_len"].tolist()
    if max_seqs:
        ids_all, plen = ids_all[:max_seqs], plen[:max_seqs]
    N, T = ids_all.shape
    blk = model.block
    E = runner.embed_weight()
    corr = torch.zeros(N, T, blk - 1, dtype=torch.bool)
    vals = torch.zeros(N, T, blk - 1, dtype=torch.bool)
    model.eval()
    for n in range(N):
        ids = ids_all[n:n + 1].to(dev)
        r = runner.run(ids)
        anchors = torch.arange(plen[n], T, device=dev)
        for s in range(0, anchors.numel(), chunk):
            a = anchors[s:s + chunk][None]
            lg, lb, vd = dflash_forward(model, r["features"], ids, r["argmax"], a, E)
            c = (lg.argmax(-1) == lb)[0].cpu()
            corr[n, a[0].cpu()] = c
            vals[n, a[0].cpu()] = vd[0].cpu()
    model.train()
    res = acceptance_summary(corr, vals, plen, [T] * N, blk - 1)
    res["sequences"] = N
    return res


def cmd_train(a):
    t_start = time.time()
    dp = DataParallel(force_cpu=a.cpu)
    seed_all(a.seed)
    dev, autocast = device_and_autocast(a.cpu)
    target = load_target(a.target, dev)
    tcfg = json.loads((Path(a.target) / "config.json").read_text())
    ids_layers = a.target_layer_ids or default_layers(tcfg["num_hidden_layers"])
    runner = TargetRunner(target, capture_layers=ids_layers)
    cfg = dflash_config(tcfg, a.layers, a.heads, a.kv_heads, a.head_dim, a.ffn, a.block, ids_layers)
    model = DFlashDrafter(cfg).to(dev)
    model.init_weights()
    if not a.no_norm_init:
        # The drafter's output head is the target's (E^T after the final norm): starting its final
        # norm at the target's gives it the target's logit scale from step 0.
        model.norm.weight.data.copy_(target.model.norm.weight.data)
    if a.init_gguf:
        # Continue from a shipped drafter (its Q8_0 values): strict, so its shapes must match the
        # arguments.
        from gguf_read import load_dflash_gguf
        model.load_state_dict({k: v.to(dev) for k, v in load_dflash_gguf(a.init_gguf).items()}, strict=True)
        if dp.main:
            log(f"dflash: weights from {a.init_gguf}")
    dp.same_weights(model)
    n_params = count_params(model)
    if dp.main:
        log(f"dflash: {n_params / 1e6:.2f} M parameters, block {a.block}, target layers {ids_layers}, device {dev}, "
            f"{dp.world} process(es) x batch {a.batch}")
    E = runner.embed_weight()
    # Each process its own stream of batches and anchors (rank 0's are those of a plain run).
    data = Batches(a.work, dev, a.batch, a.raw_frac, a.seed + 7919 * dp.rank)
    T = data.T
    gen = torch.Generator().manual_seed(a.seed + 7 + 7919 * dp.rank)
    w = torch.exp(-torch.arange(a.block - 1, dtype=torch.float) / a.loss_gamma).to(dev)
    opt = make_adamw(model, a.lr, a.wd, dev)
    curve, pos_curve, eval_curve = [], [], []
    sched = Schedule(a.steps, a.max_seconds, a.lr, a.warmup)
    t0 = sched.t0
    step = 0
    while True:
        lr, stop = dp.agree(sched.lr(step), sched.done(step), dev)
        if stop:
            break
        for g in opt.param_groups:
            g["lr"] = lr
        ids = data.next()
        anchors = sample_anchors(ids.shape[0], T, a.anchors, a.block, gen, dev)
        ctx_lo = None
        if a.ctx_drop > 0:
            # Some blocks see only the last w context positions (w uniform in 0..ctx_drop_max):
            # strong early gradient for using the anchor and the most recent context.
            win = torch.randint(0, a.ctx_drop_max + 1, anchors.shape, generator=gen).to(dev)
            drop = (torch.rand(anchors.shape, generator=gen) < a.ctx_drop * max(0.0, 1 - step / max(1, a.ctx_drop_steps))).to(dev)
            ctx_lo = torch.where(drop, anchors - win, torch.zeros_like(anchors))
        with autocast():
            r = runner.run(ids)
            lg, lb, vd = dflash_forward(model, r["features"], ids, r["argmax"], anchors, E, ctx_lo)
            ce = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), lb.reshape(-1), reduction="none").view(lb.shape)
            wv = w * vd
            loss = (ce * wv).sum() / wv.sum()
        loss.backward()
        dp.average_grads(model)
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        last = sched.done(step + 1)
        if dp.main and (step % a.log_every == 0 or last):
            with torch.no_grad():
                acc = ((lg.argmax(-1) == lb) & vd).float().sum((0, 1)) / vd.float().sum((0, 1)).clamp(min=1)
            curve.append((step, loss.item()))
            pos_curve.append((step, acc.tolist()))
            log(f"dflash step {step}/{a.steps} loss {loss.item():.4f} train acc rows 1/4/8/15 "
                f"{[round(acc[i].item(), 3) for i in (0, 3, 7, a.block - 2) if i < acc.numel()]} gnorm {gn.item():.2f} "
                f"lr {lr:.2e} {(time.time() - t0) / (step + 1) * 1e3:.0f} ms/step")
        if dp.main and a.eval_every and step > 0 and step % a.eval_every == 0:
            ev = evaluate(model, runner, a.work, dev, max_seqs=a.eval_seqs_during)
            eval_curve.append((step, ev["simulated_acceptance_length"]))
            log(f"dflash step {step}: held-out acceptance length {ev['simulated_acceptance_length']:.3f}")
        step += 1
    dp.check_same_weights(model)
    if not dp.main:
        dp.close()
        return
    capped = sched.time_limited
    if capped:
        log(f"dflash: time budget reached after {step} of {a.steps} steps (LR schedule followed time)")
    sync(dev)
    train_seconds = time.time() - t0
    with exact_fp32():
        ev = evaluate(model, runner, a.work, dev)
    eval_curve.append((step, ev["simulated_acceptance_length"]))
    log(f"dflash: held-out (fp32) acceptance length {ev['simulated_acceptance_length']:.3f} over "
        f"{ev['simulated_rounds']} rounds; per-position accuracy {[round(x, 3) for x in ev['per_position_accuracy']]}")

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    problems = layout.check_hf_folder(out, "dflash")
    if problems:
        raise SystemExit(f"dflash folder does not have the fixture layout: {problems}")
    plot_curves(Path(a.curves) / "dflash_loss.png", "DFlash: train loss (position-decayed CE)", {"train": curve},
                ylabel="weighted cross-entropy vs target argmax")
    rows = [0, 1, 3, 7, a.block - 2]
    plot_curves(Path(a.curves) / "dflash_train_accuracy.png", "DFlash: train accuracy by block row",
                {f"row {i + 1}": [(s, accs[i]) for s, accs in pos_curve] for i in rows if i < a.block - 1},
                ylabel="accuracy")
    plot_curves(Path(a.curves) / "dflash_acceptance.png", "DFlash: held-out acceptance length",
                {f"acceptance length (block {a.block})": eval_curve}, ylabel="tokens per round")
    write_json(Path(a.work) / "metrics_dflash.json", {
        "seed": a.seed, "params": n_params, "q8_0_bytes_estimate": q8_0_bytes(sd),
        "config": {k: getattr(a, k) for k in ("layers", "heads", "kv_heads", "head_dim", "ffn", "block", "anchors",
                                               "batch", "steps", "lr", "wd", "warmup", "clip", "loss_gamma", "raw_frac")},
        "target_layer_ids": ids_layers, "steps_done": step, "time_limited": capped,
        "train_seconds": round(train_seconds, 1), "final_loss": curve[-1][1] if curve else None,
        "train_curve": curve, "eval_curve": eval_curve, "heldout": ev,
        "stage_seconds": round(time.time() - t_start, 1), "env": env_info(),
        "processes": dp.world, "batch_total": a.batch * dp.world,
    })
    dp.close()


def default_layers(n_layers):
    """Four layers spread over the target, leaving out the last one (whose output transformers
    reports post-norm in hidden_states, an ambiguity not worth having): 6 layers -> [1, 2, 3, 4]."""
    if n_layers <= 5:
        return list(range(n_layers - 1))
    return [round(1 + i * (n_layers - 3) / 3) for i in range(4)]


@torch.no_grad()
def check_fixture(fixtures: Path):
    hf = fixtures / "hf"
    cfg = json.loads((hf / "dflash" / "config.json").read_text())
    model = DFlashDrafter(cfg)
    weights = load_file(str(hf / "dflash" / "model.safetensors"))
    model.load_state_dict(weights, strict=True)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in weights.items()}
    E = load_file(str(hf / "dense" / "model.safetensors"))["model.embed_tokens.weight"]
    ref = load_file(str(fixtures / "dflash.ref.safetensors"))
    feats = ref["context_features"][None]
    C = feats.shape[1]
    toks = ref["block_input_ids"].long()[None]
    qpos = ref["block_positions"].long()[None]
    Q = toks.shape[1]
    kpos = torch.cat([torch.arange(C)[None], qpos], 1)
    mask = torch.ones(1, 1, Q, C + Q, dtype=torch.bool)
    h = model(F.embedding(toks, E) * model.embed_scale, model.encode_context(feats), qpos, kpos, mask)
    raw = model.logits(h, E, cap=False)[0]
    capped = model.logits(h, E, cap=True)[0]

    def rel(x, y):
        return (x - y).norm().item() / y.norm().item()

    def maxrel(x, y):
        return ((x - y).abs().max() / y.abs().max()).item()

    res = {
        "state_dict_names_shapes_equal_fixture": ours == theirs,
        "hidden_rel_l2": rel(h[0], ref["block_hidden"]), "hidden_max_rel": maxrel(h[0], ref["block_hidden"]),
        "logits_raw_rel_l2": rel(raw, ref["block_logits_raw"]), "logits_raw_max_rel": maxrel(raw, ref["block_logits_raw"]),
        "logits_rel_l2": rel(capped, ref["block_logits"]), "logits_max_rel": maxrel(capped, ref["block_logits"]),
        "draft_tokens_equal": raw[1:].argmax(-1).tolist() == ref["block_draft_tokens"].tolist(),
    }
    # The packed training path (several blocks, per-block mask) must give the same block rows.
    ids = torch.cat([ref["prompt_ids"].long(), toks[0, :1]])[None]
    anchors = torch.tensor([[C - 5, C]])
    feats2 = torch.cat([feats, torch.zeros(1, 1, feats.shape[2])], 1)
    argmax = torch.zeros_like(ids)
    blk_saved = model.block
    model.block = Q
    lg, _, _ = dflash_forward(model, feats2, ids, argmax, anchors, E)
    model.block = blk_saved
    res["packed_vs_single_rel_l2"] = rel(lg[0, 1], capped[1:])
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
    t.add_argument("--layers", type=int, default=4)
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--kv-heads", type=int, default=2)
    t.add_argument("--head-dim", type=int, default=64)
    t.add_argument("--ffn", type=int, default=512)
    t.add_argument("--block", type=int, default=16)
    t.add_argument("--target-layer-ids", type=int, nargs="+", default=None)
    t.add_argument("--anchors", type=int, default=64, help="blocks per sequence per step")
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--raw-frac", type=float, default=0.5)
    t.add_argument("--steps", type=int, default=4000)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--wd", type=float, default=0.01)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--clip", type=float, default=1.0)
    t.add_argument("--loss-gamma", type=float, default=7.0)
    t.add_argument("--max-seconds", type=float, default=160.0)
    t.add_argument("--log-every", type=int, default=50)
    t.add_argument("--eval-every", type=int, default=500)
    t.add_argument("--eval-seqs-during", type=int, default=16)
    t.add_argument("--ctx-drop", type=float, default=0.0, help="fraction of blocks with truncated context at step 0")
    t.add_argument("--ctx-drop-max", type=int, default=16)
    t.add_argument("--ctx-drop-steps", type=int, default=1000, help="the fraction decays linearly to 0 over these steps")
    t.add_argument("--no-norm-init", action="store_true", help="final norm starts at 1, not at the target's")
    t.add_argument("--init-gguf", type=Path, default=None,
                   help="start from this DFlash GGUF's weights (F32/F16/Q8_0) instead of random ones")
    t.add_argument("--cpu", action="store_true")
    c = sub.add_parser("check-fixture")
    c.add_argument("--fixtures", required=True, type=Path)
    c.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if a.cmd == "train":
        cmd_train(a)
    else:
        res = check_fixture(a.fixtures)
        print(json.dumps(res, indent=1))
        if a.json:
            write_json(a.json, res)
        ok = res["logits_raw_rel_l2"] < 1e-4 and res["hidden_rel_l2"] < 1e-4 and res["draft_tokens_equal"] and \
            res["state_dict_names_shapes_equal_fixture"] and res["packed_vs_single_rel_l2"] < 1e-5
        raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()

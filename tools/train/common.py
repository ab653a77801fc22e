"""Shared helpers for the training scripts: logging, seeds, metrics files, curves, RoPE and
RMSNorm in Gemma 4's exact form, and the frozen-target runner that the drafters train against.

Everything here is written for this project; the math follows transformers' Gemma 4 and DFlash
(MuseGlimmer) implementations as described in shared/reference/gemma4-model.md.
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
import sys
import time
import zlib
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------
# Tokens (same ids as the fixture tokenizer, shared/fixtures/hf/dense/tokenizer.json)

SPECIAL_TOKENS = [
    "<pad>", "<eos>", "<bos>", "<unk>", "<mask>",
    "<|turn>", "<turn|>", "<|channel>", "<channel|>",
    "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>',
]
PAD_ID, EOS_ID, BOS_ID, UNK_ID, MASK_ID = 0, 1, 2, 3, 4
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
FIRST_BYTE_ID = len(SPECIAL_TOKENS)  # 14
FIRST_LEARNED_ID = FIRST_BYTE_ID + 256  # 270

_T0 = time.time()


def log(*args):
    print(f"[{time.time() - _T0:7.1f}s]", *args, flush=True)


def seed_all(seed: int):
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def device_and_autocast(force_cpu: bool = False):
    """(device, autocast context factory). bf16 autocast on CUDA, plain fp32 on CPU."""
    if torch.cuda.is_available() and not force_cpu:
        dev = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return dev, (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
    return torch.device("cpu"), nullcontext


class exact_fp32:
    """Disables TF32 inside the block (evaluation in true fp32 on GPUs)."""

    def __enter__(self):
        self.saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        return self

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved
        return False


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def read_json(path, default=None):
    p = Path(path)
    if not p.exists():
        return default
    return json.loads(p.read_text())


def write_json(path, obj):
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    tmp.replace(p)


def stage_metrics_path(work: Path, stage: str) -> Path:
    """Each stage writes its own file (the drafters train concurrently); run_all merges them."""
    return Path(work) / f"metrics_{stage}.json"


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def q8_0_bytes(state_dict: dict) -> int:
    """Rough GGUF Q8_0 size of a state dict: 2-D tensors with rows divisible by 32 at 34 bytes
    per 32 weights, everything else f32 (what llama.cpp's converter does with --outtype q8_0)."""
    total = 0
    for t in state_dict.values():
        if t.dim() >= 2 and t.shape[-1] % 32 == 0:
            total += t.numel() // 32 * 34
        else:
            total += t.numel() * 4
    return total


# --------------------------------------------------------------------------------------------
# Curves: matplotlib when present, else a small built-in PNG line plot (no text).

def plot_curves(path: Path, title: str, series: dict, xlabel: str = "step", ylabel: str = "loss",
                logy: bool = False):
    """series: name -> list of (x, y)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path.with_suffix(".json"), {"title": title, "xlabel": xlabel, "ylabel": ylabel,
                                           "series": {k: [list(p) for p in v] for k, v in series.items()}})
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        _png_plot(path, series, logy)
        return
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, pts in series.items():
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=name, marker="o" if len(pts) < 30 else None, ms=3)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _png_plot(path: Path, series: dict, logy: bool):
    W, H, M = 640, 400, 30
    img = [[(255, 255, 255)] * W for _ in range(H)]
    colors = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
    pts_all = [p for v in series.values() for p in v]
    if not pts_all:
        return
    tf = (lambda y: math.log(max(y, 1e-9))) if logy else (lambda y: y)
    xs = [p[0] for p in pts_all]
    ys = [tf(p[1]) for p in pts_all]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = y1 if y1 > y0 else y0 + 1

    def px(x, y):
        return (int(M + (x - x0) / (x1 - x0) * (W - 2 * M)), int(H - M - (tf(y) - y0) / (y1 - y0) * (H - 2 * M)))

    for i in range(M, W - M):
        img[H - M][i] = (0, 0, 0)
    for j in range(M, H - M):
        img[j][M] = (0, 0, 0)
    for k, pts in enumerate(series.values()):
        c = colors[k % len(colors)]
        prev = None
        for x, y in pts:
            cur = px(x, y)
            if prev is not None:
                n = max(abs(cur[0] - prev[0]), abs(cur[1] - prev[1]), 1)
                for s in range(n + 1):
                    a = prev[0] + (cur[0] - prev[0]) * s // n
                    b = prev[1] + (cur[1] - prev[1]) * s // n
                    if 0 <= a < W and 0 <= b < H:
                        img[b][a] = c
            prev = cur
    raw = b"".join(b"\x00" + bytes(v for p in row for v in p) for row in img)

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)


# --------------------------------------------------------------------------------------------
# Gemma 4 math pieces used by the drafters (RMSNorm x*w in fp32; RoPE "default" and
# "proportional"; rotate_half pairing).

class RMSNorm(nn.Module):
    """Gemma 4 / Qwen3 RMSNorm: x * (mean(x^2)+eps)^-0.5 * w, computed in fp32, weight init 1."""

    def __init__(self, dim: int, eps: float = 1e-6, with_scale: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if with_scale else None

    def forward(self, x):
        xf = x.float()
        y = xf * torch.pow(xf.pow(2).mean(-1, keepdim=True) + self.eps, -0.5)
        if self.weight is not None:
            y = y * self.weight.float()
        return y.type_as(x)


def rope_inv_freq(head_dim: int, theta: float, rope_type: str = "default",
                  partial_rotary_factor: float = 1.0) -> torch.Tensor:
    """Inverse frequencies, length head_dim/2. 'proportional' (Gemma 4 full layers) rotates only
    the first int(factor*head_dim/2) pairs with exponent denominator head_dim; the rest get 0."""
    if rope_type == "default":
        return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    if rope_type == "proportional":
        angles = int(partial_rotary_factor * head_dim // 2)
        rot = 1.0 / (theta ** (torch.arange(0, 2 * angles, 2, dtype=torch.float) / head_dim))
        return torch.cat([rot, torch.zeros(head_dim // 2 - angles)])
    raise ValueError(rope_type)


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, dtype):
    """positions [...] -> cos, sin [..., head_dim] (cat(freqs, freqs))."""
    freqs = positions[..., None].float() * inv_freq.to(positions.device)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def apply_rope(x, cos, sin):
    """x [B, heads, L, D]; cos/sin [B or 1, L, D]."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


def softcap(logits, cap):
    if cap is None or cap <= 0:
        return logits
    return torch.tanh(logits / cap) * cap


# --------------------------------------------------------------------------------------------
# The frozen target as the drafters see it.

class TargetRunner:
    """Wraps a transformers Gemma4ForCausalLM (frozen) and returns, for a batch of token ids:
    the post-final-norm hidden state, the argmax of its (softcapped) logits, the K/V of its last
    sliding and last full layer (post k_norm+RoPE; V post v_norm — what the MTP assistant reads)
    and the outputs of chosen layers (DFlash context features).

    K/V are recomputed from the attention input captured by a hook, with the layer's own k_proj /
    v_proj / k_norm / v_norm modules and the cos/sin transformers passed in, so nothing depends
    on transformers' cache internals."""

    def __init__(self, model, capture_layers=(), need_kv=False):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.cfg = model.config
        self.layer_types = list(self.cfg.layer_types)
        self.last_sliding = max(i for i, t in enumerate(self.layer_types) if t == "sliding_attention")
        self.last_full = max(i for i, t in enumerate(self.layer_types) if t == "full_attention")
        self.capture_layers = list(capture_layers)
        self.need_kv = need_kv
        self._store = {}
        self._hooks = []
        layers = self.model.model.layers
        for i in self.capture_layers:
            self._hooks.append(layers[i].register_forward_hook(self._out_hook(i)))
        if need_kv:
            for i in (self.last_sliding, self.last_full):
                self._hooks.append(layers[i].self_attn.register_forward_pre_hook(self._attn_hook(i), with_kwargs=True))

    def _out_hook(self, i):
        def hook(_mod, _inp, out):
            self._store[("out", i)] = out[0] if isinstance(out, tuple) else out
        return hook

    def _attn_hook(self, i):
        def hook(mod, args, kwargs):
            h = kwargs.get("hidden_states", args[0] if args else None)
            cos, sin = kwargs["position_embeddings"]
            self._store[("kv", i)] = self._kv(mod, h, cos, sin)
        return hook

    @staticmethod
    def _kv(attn, h, cos, sin):
        B, L, _ = h.shape
        hd = attn.head_dim
        k = attn.k_proj(h).view(B, L, -1, hd)
        v = attn.v_proj(h).view(B, L, -1, hd) if attn.v_proj is not None else k
        k = attn.k_norm(k)
        k = k * cos[:, :, None] + rotate_half(k) * sin[:, :, None]
        v = attn.v_norm(v)
        return k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()

    def embed_weight(self):
        return self.model.model.embed_tokens.weight

    @torch.no_grad()
    def run(self, ids: torch.Tensor):
        self._store = {}
        out = self.model.model(input_ids=ids, use_cache=False)
        h = out.last_hidden_state
        with torch.autocast(h.device.type, enabled=False):  # labels from an fp32 head even under autocast
            logits = softcap(F.linear(h.float(), self.embed_weight().float()), self.cfg.final_logit_softcapping)
        res = {"hidden": h, "argmax": logits.argmax(-1)}
        if self.capture_layers:
            # transformers' hidden_states[i + 1]: the last layer's entry is after the final norm.
            last = self.cfg.num_hidden_layers - 1
            res["features"] = torch.cat([h if i == last else self._store[("out", i)] for i in self.capture_layers],
                                        dim=-1)
        if self.need_kv:
            res["kv"] = {"sliding_attention": self._store[("kv", self.last_sliding)],
                         "full_attention": self._store[("kv", self.last_full)]}
        self._store = {}
        return res

    @torch.no_grad()
    def logits(self, ids):
        return self.model(input_ids=ids, use_cache=False).logits


def load_target(path, dev, dtype=torch.float32):
    from transformers import Gemma4ForCausalLM
    m = Gemma4ForCausalLM.from_pretrained(str(path), dtype=dtype)
    return m.to(dev).eval()


# --------------------------------------------------------------------------------------------
# Token data written by tokenizer.py / target.py

def load_tokens(work: Path, split: str) -> torch.Tensor:
    return torch.load(Path(work) / f"tokens_{split}.pt")


def speculative_rounds(correct: torch.Tensor, start: int, end: int, n_draft: int):
    """Greedy speculative decoding over one sequence given per-anchor correctness.

    correct[t, k] = whether draft k of the round anchored at position t equals the target token.
    Rounds start at `start` and advance by accepted+1 while the round's drafts stay below `end`.
    Returns a list of accepted counts (the acceptance length of a round is accepted + 1)."""
    acc = []
    t = start
    while t + n_draft <= end:
        row = correct[t]
        a = 0
        while a < n_draft and bool(row[a]):
            a += 1
        acc.append(a)
        t += a + 1
    return acc


def acceptance_summary(correct: torch.Tensor, valid: torch.Tensor, starts, ends, n_draft: int):
    """correct/valid [N, T, n_draft] bool. Per-position accuracy, prefix acceptance, and the
    simulated round-by-round mean acceptance length over each sequence's generated region."""
    c = correct & valid
    per_pos = [(c[..., k].sum() / valid[..., k].sum().clamp(min=1)).item() for k in range(n_draft)]
    prefix = torch.cumprod(correct.int(), dim=-1).bool() & valid
    per_prefix = [(prefix[..., k].sum() / valid[..., k].sum().clamp(min=1)).item() for k in range(n_draft)]
    rounds = []
    for i in range(correct.shape[0]):
        rounds += speculative_rounds(correct[i], starts[i], ends[i], n_draft)
    hist = [0] * (n_draft + 1)
    for a in rounds:
        hist[a] += 1
    mean_acc = sum(rounds) / max(len(rounds), 1)
    # As the runtime's `xtask accept` measures it: rounds over the first 128 generated tokens only
    # (target-greedy text grows repetitive later, which flatters the whole-sequence figure).
    early = []
    for i in range(correct.shape[0]):
        early += speculative_rounds(correct[i], starts[i], min(ends[i], starts[i] + 128), n_draft)
    early_per_round = [sum(a > k for a in early) / max(len(early), 1) for k in range(n_draft)]
    return {
        "per_position_accuracy": per_pos,
        "per_position_prefix_acceptance": per_prefix,
        "expected_acceptance_length_all_anchors": 1 + sum(per_prefix),
        "simulated_rounds": len(rounds),
        "simulated_mean_accepted": mean_acc,
        "simulated_acceptance_length": 1 + mean_acc,
        "accepted_histogram": hist,
        "simulated_acceptance_length_first128": 1 + sum(early) / max(len(early), 1),
        "simulated_round_acceptance_first128": early_per_round,
    }


class Schedule:
    """Linear warmup then cosine decay to `floor` x base. Progress is the larger of step/steps and
    elapsed/max_seconds, so the decay always completes inside the time budget; with a GPU fast
    enough to finish `steps` first (the intended case) the run is step-exact and reproducible."""

    def __init__(self, steps, max_seconds, base, warmup, floor=0.1):
        self.steps, self.max_seconds, self.base, self.warmup, self.floor = steps, max_seconds, base, warmup, floor
        self.t0 = time.time()
        self.time_limited = False

    def elapsed(self):
        return time.time() - self.t0

    def progress(self, step):
        return max(step / max(1, self.steps), self.elapsed() / self.max_seconds)

    def done(self, step):
        if step >= self.steps:
            return True
        if self.elapsed() >= self.max_seconds:
            self.time_limited = True
            return True
        return False

    def lr(self, step):
        if step < self.warmup:
            return self.base * (step + 1) / self.warmup
        p = min(1.0, self.progress(step))
        return self.base * (self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * p)))


class DataParallel:
    """Data parallelism over the processes that torchrun starts (WORLD_SIZE > 1), one GPU each;
    a no-op in a plain run. Every process draws its own batches; gradients are averaged before
    the optimizer step, so the weights stay equal on all of them. Decisions that read the clock
    (the time-following LR schedule, when to stop) are taken by rank 0 and broadcast, else the
    processes would drift apart or wait for each other forever."""

    def __init__(self, force_cpu: bool = False):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1:
            import torch.distributed as dist
            self.dist = dist
            gpu = torch.cuda.is_available() and not force_cpu
            if gpu:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if gpu else "gloo")

    @property
    def main(self) -> bool:
        """Whether this process logs, evaluates and writes files."""
        return self.rank == 0

    def same_weights(self, module: nn.Module):
        """Rank 0's weights on every process."""
        if self.world > 1:
            for t in list(module.parameters()) + list(module.buffers()):
                self.dist.broadcast(t.data, 0)

    def average_grads(self, module: nn.Module):
        if self.world > 1:
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            flat = torch.cat([g.reshape(-1) for g in grads])
            self.dist.all_reduce(flat)
            flat /= self.world
            o = 0
            for g in grads:
                g.copy_(flat[o:o + g.numel()].view_as(g))
                o += g.numel()

    def agree(self, lr: float, done: bool, dev) -> tuple[float, bool]:
        """Rank 0's (lr, done)."""
        if self.world == 1:
            return lr, done
        t = torch.tensor([lr, float(done)], dtype=torch.float64, device=dev)
        self.dist.broadcast(t, 0)
        return t[0].item(), bool(t[1].item())

    def check_same_weights(self, module: nn.Module):
        """Raises unless every process ends with the same weights (a checksum's min and max)."""
        if self.world > 1:
            dev = next(module.parameters()).device
            c = torch.stack([p.detach().double().sum() for p in module.parameters()]).sum()
            lo, hi = c.clone().to(dev), c.clone().to(dev)
            self.dist.all_reduce(lo, op=self.dist.ReduceOp.MIN)
            self.dist.all_reduce(hi, op=self.dist.ReduceOp.MAX)
            if lo.item() != hi.item():
                raise SystemExit(f"data parallel: the processes' weights drifted apart ({lo.item()} vs {hi.item()})")

    def close(self):
        """Leaves the process group. No barrier: the other processes may leave while rank 0
        still evaluates and writes (minutes, past a collective's timeout)."""
        if self.world > 1:
            self.dist.destroy_process_group()


def make_adamw(module, lr, wd, dev, betas=(0.9, 0.95)):
    decay, no_decay = [], []
    for n, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    kw = {"fused": True} if dev.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8, **kw)


def env_info():
    import platform
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform()}
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except Exception:
        pass
    try:
        import tokenizers
        info["tokenizers"] = tokenizers.__version__
    except Exception:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    info["cpu_threads"] = torch.get_num_threads()
    return info

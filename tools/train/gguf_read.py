"""Reads the weights of a DFlash drafter GGUF back into the state dict of `dflash.DFlashDrafter`
(F32, F16 and Q8_0 tensors), so training can continue from a shipped drafter:

    python dflash.py train ... --init-gguf assets/specula-py-dflash.q8_0.gguf

Names are the reverse of the converter's (`crates/convert/src/dflash.rs`); a tensor this module
does not know, or a type it cannot read, is an error naming it.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
MODEL = {"fc.weight": "fc.weight", "enc.output_norm.weight": "hidden_norm.weight",
         "output_norm.weight": "norm.weight"}
F32, F16, Q8_0 = 0, 1, 8
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class Reader:
    def __init__(self, data: bytes):
        self.d, self.p = data, 0

    def take(self, fmt: str):
        v = struct.unpack_from("<" + fmt, self.d, self.p)
        self.p += struct.calcsize("<" + fmt)
        return v[0] if len(v) == 1 else v

    def string(self) -> str:
        n = self.take("Q")
        s = self.d[self.p:self.p + n].decode()
        self.p += n
        return s

    def value(self, ty: int):
        if ty in SCALARS:
            return self.take(SCALARS[ty])
        if ty == 8:
            return self.string()
        if ty == 9:
            ety, n = self.take("I"), self.take("Q")
            return [self.value(ety) for _ in range(n)]
        raise ValueError(f"unknown metadata type {ty}")


def hf_name(name: str) -> str:
    if name in MODEL:
        return MODEL[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in LAYER:
        return f"layers.{parts[1]}.{LAYER[parts[2]]}"
    raise ValueError(f"tensor '{name}' has no DFlash drafter name")


def load_dflash_gguf(path: Path) -> dict[str, torch.Tensor]:
    data = Path(path).read_bytes()
    r = Reader(data)
    if data[:4] != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    r.p = 4
    _version, n_tensors, n_kv = r.take("IQQ")
    meta = {}
    for _ in range(n_kv):
        key = r.string()
        meta[key] = r.value(r.take("I"))
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        dims = [r.take("Q") for _ in range(r.take("I"))]
        infos.append((name, dims, r.take("I"), r.take("Q")))
    align = int(meta.get("general.alignment", 32))
    base = (r.p + align - 1) // align * align
    out = {}
    for name, dims, ty, off in infos:
        n = int(np.prod(dims))
        start = base + off
        if ty == F32:
            v = np.frombuffer(data, np.float32, n, start)
        elif ty == F16:
            v = np.frombuffer(data, np.float16, n, start).astype(np.float32)
        elif ty == Q8_0:
            blocks = np.frombuffer(data, np.uint8, n // 32 * 34, start).reshape(-1, 34)
            d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
            q = blocks[:, 2:].copy().view(np.int8).astype(np.float32)
            v = (q * d).reshape(-1)
        else:
            raise ValueError(f"{path}: tensor '{name}' has type {ty}, which this reader does not handle")
        out[hf_name(name)] = torch.from_numpy(v.copy()).view(*reversed(dims))
    return out

"""Proves the training code's math against the golden fixtures (shared/fixtures), on CPU in fp32:

1. the MTP assistant module on the fixture assistant weights reproduces transformers' reference
   step outputs (assistant.ref.safetensors: step_logits, step_h_next, step_argmax);
2. the DFlash module on the fixture drafter weights reproduces the reference block
   (dflash.ref.safetensors: block_hidden, block_logits_raw, block_logits, block_draft_tokens),
   and the packed multi-block training path equals the single-block call;
3. the frozen-target runner (hooks on transformers' Gemma4ForCausalLM, loaded from the fixture
   dense folder) gives the reference's shared K/V, post-norm hidden and DFlash context features;
4. both modules' state_dict names and shapes equal the fixture safetensors;
5. `gguf_read` on llama.cpp's dflash.gguf gives back the fixture checkpoint exactly.

    python check_fixtures.py --fixtures ../shared/fixtures [--json report.json]
Exit status 0 when every error is below 1e-4 relative (L2) and all argmax/draft tokens agree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

import assistant
import dflash
from common import TargetRunner, load_target, write_json


@torch.no_grad()
def check_runner(fixtures: Path):
    model = load_target(fixtures / "hf" / "dense", torch.device("cpu"))
    aref = load_file(str(fixtures / "assistant.ref.safetensors"))
    dref = load_file(str(fixtures / "dflash.ref.safetensors"))
    dcfg = json.loads((fixtures / "hf" / "dflash" / "config.json").read_text())
    runner = TargetRunner(model, capture_layers=dcfg["dflash_config"]["target_layer_ids"], need_kv=True)

    def rel(x, y):
        return (x - y).norm().item() / y.norm().item()

    r = runner.run(aref["prompt_ids"].long()[None])
    res = {}
    for t in ("sliding_attention", "full_attention"):
        k, v = r["kv"][t]
        res[f"k_{t}_rel_l2"] = rel(k[0], aref[f"target_shared_k_{t}"])
        res[f"v_{t}_rel_l2"] = rel(v[0], aref[f"target_shared_v_{t}"])
    res["post_norm_hidden_rel_l2"] = rel(r["hidden"][0, -1], aref["step_in_h_prev"][0])
    res["argmax_equals_first_greedy"] = int(r["argmax"][0, -1]) == int(aref["step_in_token"][0])
    r2 = runner.run(dref["prompt_ids"].long()[None])
    res["dflash_context_features_rel_l2"] = rel(r2["features"][0], dref["context_features"])
    return res


@torch.no_grad()
def check_gguf_read(fixtures: Path) -> dict:
    """`gguf_read` on llama.cpp's f32 dflash.gguf gives back the checkpoint behind it exactly."""
    from gguf_read import load_dflash_gguf
    ours = load_dflash_gguf(fixtures / "dflash.gguf")
    theirs = load_file(str(fixtures / "hf" / "dflash" / "model.safetensors"))
    same = sorted(ours) == sorted(theirs) and all(torch.equal(ours[k], theirs[k].float()) for k in theirs)
    return {"dflash_gguf_equals_checkpoint": same, "tensors": len(theirs)}


@torch.no_grad()
def check_trained_assistant(hf: Path):
    """Loads a trained OUT/hf/assistant with transformers' own Gemma4AssistantForCausalLM (when the
    installed transformers has it) and compares it with our module on the target's real KV/hidden:
    proves the written config.json means to transformers what it means to us."""
    if not (hf / "assistant" / "config.json").exists():
        return {"skipped": "this run trained no assistant"}
    try:
        from transformers import Gemma4AssistantForCausalLM
    except ImportError:
        return {"skipped": "transformers has no Gemma4AssistantForCausalLM"}
    import math
    cfg = json.loads((hf / "assistant" / "config.json").read_text())
    ours = assistant.Gemma4Assistant(cfg)
    ours.load_state_dict(load_file(str(hf / "assistant" / "model.safetensors")), strict=True)
    ours.eval()
    theirs = Gemma4AssistantForCausalLM.from_pretrained(str(hf / "assistant"), dtype=torch.float32).eval()
    target = load_target(hf / "target", torch.device("cpu"))
    runner = TargetRunner(target, need_kv=True)
    g = torch.Generator().manual_seed(0)
    T = 3 * cfg["text_config"]["sliding_window"] // 2 + 5       # longer than the window
    ids = torch.randint(20, cfg["text_config"]["vocab_size"], (1, T + 1), generator=g)
    ids[0, 0] = 2
    r = runner.run(ids[:, :T])
    hb = cfg["backbone_hidden_size"]
    x = torch.cat([runner.embed_weight()[ids[:, T]][:, None] * math.sqrt(hb), r["hidden"][:, -1:]], -1)
    j = torch.arange(T)
    w = cfg["text_config"]["sliding_window"]
    masks = {"full_attention": (j <= T - 1)[None, None, None],
             "sliding_attention": ((j <= T - 1) & (j >= T - 1 - w))[None, None, None]}
    lg, hn = ours(x, torch.tensor([[T]]), r["kv"], masks)
    o = theirs(inputs_embeds=x, position_ids=torch.tensor([[T]]), attention_mask=torch.ones(1, T, dtype=torch.long),
               shared_kv_states=r["kv"])
    return {"logits_rel_l2": ((lg - o.logits).norm() / o.logits.norm()).item(),
            "h_next_rel_l2": ((hn - o.last_hidden_state).norm() / o.last_hidden_state.norm()).item(),
            "context_len": T, "sliding_window": w}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", type=Path, default=None, help="shared/fixtures (omit to run only --trained)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--trained", type=Path, default=None,
                    help="OUT/hf of a training run: also load its assistant with transformers' class and compare")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    rep = {}
    if a.trained:
        rep["trained_assistant_vs_transformers"] = t = check_trained_assistant(a.trained)
        print("trained assistant vs transformers' Gemma4AssistantForCausalLM:", t)
        if "skipped" not in t and max(t["logits_rel_l2"], t["h_next_rel_l2"]) > 1e-4:
            print("fixture checks: FAIL (trained assistant)")
            sys.exit(1)
    if a.fixtures is None:
        if a.json:
            write_json(a.json, rep)
        sys.exit(0)
    rep.update({"assistant": assistant.check_fixture(a.fixtures), "dflash": dflash.check_fixture(a.fixtures),
                "target_runner": check_runner(a.fixtures), "gguf_read": check_gguf_read(a.fixtures)})
    errs = {
        "assistant.max_logits_rel_l2": rep["assistant"]["max_logits_rel_l2"],
        "assistant.max_h_next_rel_l2": rep["assistant"]["max_h_next_rel_l2"],
        "dflash.hidden_rel_l2": rep["dflash"]["hidden_rel_l2"],
        "dflash.logits_raw_rel_l2": rep["dflash"]["logits_raw_rel_l2"],
        "dflash.logits_rel_l2": rep["dflash"]["logits_rel_l2"],
        "dflash.packed_vs_single_rel_l2": rep["dflash"]["packed_vs_single_rel_l2"],
        **{f"target_runner.{k}": v for k, v in rep["target_runner"].items() if k.endswith("rel_l2")},
    }
    flags = {
        "assistant.argmax_equal": rep["assistant"]["all_argmax_equal"],
        "assistant.names_shapes_equal": rep["assistant"]["state_dict_names_shapes_equal_fixture"],
        "dflash.draft_tokens_equal": rep["dflash"]["draft_tokens_equal"],
        "dflash.names_shapes_equal": rep["dflash"]["state_dict_names_shapes_equal_fixture"],
        "target_runner.argmax_equals_first_greedy": rep["target_runner"]["argmax_equals_first_greedy"],
        "gguf_read.dflash_equals_checkpoint": rep["gguf_read"]["dflash_gguf_equals_checkpoint"],
    }
    for k, v in errs.items():
        print(f"{k:48s} {v:.3e}")
    for k, v in flags.items():
        print(f"{k:48s} {v}")
    rep["summary"] = {"errors": errs, "flags": flags}
    if a.json:
        write_json(a.json, rep)
    ok = all(v < 1e-4 for v in errs.values()) and all(flags.values())
    print("fixture checks:", "PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

"""Merges the per-stage metrics (OUT/work/metrics_*.json, written by each script) and the stage
timings into OUT/metrics.json, adds the size estimate of the trio at Q8_0, and prints a summary.

    python metrics.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from common import read_json, write_json

# GGUF metadata on top of the tensors: the tokenizer (tokens, scores, types, merges) in the target
# and the assistant file, a few KiB elsewhere. Measured from the vocabulary size below.
STAGES = ["corpus", "tokenizer", "target", "gen", "assistant", "dflash", "fixtures"]


def tokenizer_meta_bytes(tok_json: Path) -> int:
    if not tok_json.exists():
        return 0
    j = json.loads(tok_json.read_text())
    toks = j["model"]["vocab"]
    merges = j["model"]["merges"]
    b = sum(8 + len(t.encode()) for t in toks) + 8 * len(toks)  # strings + score f32 + type i32
    b += sum(8 + len((" ".join(m) if isinstance(m, list) else m).encode()) for m in merges)
    return b + 4096


def main():
    out = Path(sys.argv[1])
    work = out / "work"
    m = {"run": read_json(work / "run.json", {})}
    for s in STAGES:
        v = read_json(work / f"metrics_{s}.json")
        if v is not None:
            m[s] = v
    m["stage_wall_seconds"] = read_json(work / "timings.json", {})
    tok_meta = tokenizer_meta_bytes(work / "tokenizer" / "tokenizer.json")
    size = {}
    for s, with_tok in (("target", True), ("assistant", True), ("dflash", False)):
        if s in m:
            size[s] = m[s]["q8_0_bytes_estimate"] + (tok_meta if with_tok else 4096)
    if size:
        size["total"] = sum(size.values())
        size["note"] = ("estimate: 2-D tensors at 34 bytes per 32 weights, 1-D tensors f32, plus tokenizer "
                        "metadata in the target and assistant files")
    m["gguf_q8_0_size_estimate_bytes"] = size
    params = {s: m[s]["params"] for s in ("target", "assistant", "dflash") if s in m}
    m["params"] = params
    headline = {}
    if "target" in m:
        headline["target_heldout_perplexity"] = m["target"]["heldout_perplexity"]
        headline["target_heldout_bits_per_byte_approx"] = m["target"]["heldout_bits_per_byte_approx"]
    if "assistant" in m:
        h = m["assistant"]["heldout"]
        headline["mtp_acceptance_length_gamma4"] = h["simulated_acceptance_length"]
        headline["mtp_per_position_accuracy"] = h["per_position_accuracy"]
        headline["mtp_acceptance_length_first128"] = h.get("simulated_acceptance_length_first128")
    if "dflash" in m:
        h = m["dflash"]["heldout"]
        headline["dflash_acceptance_length_block16"] = h["simulated_acceptance_length"]
        headline["dflash_per_position_accuracy"] = h["per_position_accuracy"]
        headline["dflash_acceptance_length_first128"] = h.get("simulated_acceptance_length_first128")
        headline["target_layer_ids"] = m["dflash"].get("target_layer_ids")
    if "fixtures" in m:
        headline["fixture_checks"] = m["fixtures"].get("summary")
        headline["trained_assistant_vs_transformers"] = m["fixtures"].get("trained_assistant_vs_transformers")
    headline["params"] = params
    headline["q8_0_total_bytes_estimate"] = size.get("total")
    headline["stage_wall_seconds"] = m["stage_wall_seconds"]
    m = {"headline": headline, **m}
    write_json(out / "metrics.json", m)
    print(json.dumps(headline, indent=1))


if __name__ == "__main__":
    main()

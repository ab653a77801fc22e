#!/usr/bin/env python3
"""One line per A/B bench (bench/gpu/ab.sh): decode tok/s at depth 0 / 4K / 32K, verify times in
ms (from the log), the drafts' fractions of a decode step and decode's share of copy.

    bench/gpu/ab-summary.py OUTDIR/LABEL ...
"""
import glob
import json
import sys


def verify_ms(log):
    ms = {}
    try:
        for line in open(log):
            if line.startswith("verify k="):
                k, rest = line[len("verify k="):].split(":", 1)
                ms[k] = float(rest.split()[0])
    except OSError:
        pass
    return ms


for d in sys.argv[1:]:
    for f in sorted(glob.glob(d + "/*.json")):
        v = json.load(open(f))
        dec = v.get("decode_tok_s", {})
        ms = verify_ms(d + ".log")
        ts = " ".join(f"t{k} {ms[k]:6.2f}" for k in ["1", "5", "8", "9", "16"] if k in ms)
        print(
            f"{d.rstrip('/').split('/')[-1]:10s} dec {dec.get('0', 0):6.2f} {dec.get('4096', 0):6.2f} "
            f"{dec.get('32768', 0):6.2f} | {ts} | mtp {v.get('mtp_draft_fraction', 0):.4f} "
            f"df {v.get('dflash_draft_fraction', 0):.4f} bw {v.get('decode_bw_fraction', 0):.4f}"
        )

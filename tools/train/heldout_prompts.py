"""Held-out prompts for `cargo xtask accept`: code snippets from the held-out stdlib files.

Usage: python tools/train/heldout_prompts.py CORPUS_JSON OUT_JSONL [--per-file 3] [--lines 12]

For each held-out file of a training run's corpus split (corpus.json, which names the stdlib
folder it was drawn from), takes up to --per-file snippets, each --lines lines starting at a
`def`/`class` line spread evenly through the file (without the final newline), and writes one {"file", "line", "text"} per
line. Deterministic: the same corpus.json and stdlib give the same prompts.
"""

import argparse
import json
from pathlib import Path


def snippets(text, per_file, n_lines):
    lines = text.splitlines(keepends=True)
    starts = [i for i, l in enumerate(lines) if l.lstrip().startswith(("def ", "class "))
              and i + n_lines <= len(lines)]
    if not starts:
        return []
    step = max(1, len(starts) // per_file)
    picked = starts[::step][:per_file]
    # Without the last newline: a bare "\n" token ends files in training (newline + indentation
    # is one token inside code), so a prompt ending in one invites <eos>.
    return [(i + 1, "".join(lines[i:i + n_lines]).rstrip("\n")) for i in picked]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-file", type=int, default=3)
    ap.add_argument("--lines", type=int, default=12)
    a = ap.parse_args()
    corpus = json.loads(a.corpus.read_text())
    root = Path(corpus["stdlib"])
    rows = []
    for rel in corpus["heldout"]:
        path = root / rel
        text = path.read_text(encoding="utf-8")
        for line, snippet in snippets(text, a.per_file, a.lines):
            rows.append({"file": rel, "line": line, "text": snippet})
    a.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} prompts from {len(corpus['heldout'])} held-out files -> {a.out}")


if __name__ == "__main__":
    main()

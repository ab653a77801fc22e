"""Gathers the training corpus — the running Python's own standard library `.py` files — and
splits it deterministically into train and held-out sets by a hash of each file's path relative
to the stdlib folder (about `--heldout-pct` percent held out), so the split is the same on any
machine with the same files.

Writes WORK/corpus.json: the stdlib folder, Python version, the two file lists, byte counts and
a digest of the exact file contents used. Other scripts read the texts through `load_texts`.

    python corpus.py --work OUT/work [--max-files N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import sysconfig
from pathlib import Path

from common import log, write_json, read_json

SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def heldout_bucket(rel: str) -> int:
    """0..9999 from sha256 of the relative path (stable across machines and Python builds)."""
    return int.from_bytes(hashlib.sha256(rel.encode()).digest()[:4], "big") % 10000


def gather(root: Path, heldout_pct: float, max_files: int | None = None, max_bytes: int = 2_000_000):
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for f in sorted(filenames):
            if f.endswith(".py"):
                files.append(Path(dirpath) / f)
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    train, heldout, skipped = [], [], []
    digest = hashlib.sha256()
    n_bytes = {"train": 0, "heldout": 0}
    for p in files:
        rel = p.relative_to(root).as_posix()
        try:
            data = p.read_bytes()
            if len(data) > max_bytes or len(data) == 0:
                skipped.append([rel, "size"])
                continue
            data.decode("utf-8")
        except (UnicodeDecodeError, OSError) as e:
            skipped.append([rel, type(e).__name__])
            continue
        split = "heldout" if heldout_bucket(rel) < heldout_pct * 100 else "train"
        (heldout if split == "heldout" else train).append(rel)
        n_bytes[split] += len(data)
        digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    if max_files:
        # Smoke runs: a deterministic subset, keeping the split's proportions roughly.
        n_held = max(2, int(max_files * heldout_pct / 100) + 1)
        train = [r for r in train if "test" not in r][: max_files - n_held]
        heldout = [r for r in heldout if "test" not in r][:n_held]
        n_bytes = {"train": sum((root / r).stat().st_size for r in train),
                   "heldout": sum((root / r).stat().st_size for r in heldout)}
    return {
        "stdlib": str(root),
        "python": sys.version.split()[0],
        "heldout_pct": heldout_pct,
        "split_rule": "sha256(relative path)[:4] as big-endian int % 10000 < heldout_pct*100 -> held out",
        "n_files": {"train": len(train), "heldout": len(heldout)},
        "bytes": n_bytes,
        "content_sha256": digest.hexdigest(),
        "skipped": skipped,
        "train": train,
        "heldout": heldout,
    }


def load_texts(work: Path, split: str) -> list[tuple[str, str]]:
    man = read_json(Path(work) / "corpus.json")
    root = Path(man["stdlib"])
    return [(rel, (root / rel).read_text(encoding="utf-8")) for rel in man[split]]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--stdlib", type=Path, default=None, help="default: sysconfig's stdlib of this Python")
    ap.add_argument("--heldout-pct", type=float, default=5.0)
    ap.add_argument("--max-files", type=int, default=None, help="smoke runs: use this many files")
    a = ap.parse_args()
    root = a.stdlib or stdlib_dir()
    man = gather(root, a.heldout_pct, a.max_files)
    write_json(a.work / "corpus.json", man)
    log(f"corpus: {root} python {man['python']}: train {man['n_files']['train']} files "
        f"{man['bytes']['train'] / 1e6:.1f} MB, held out {man['n_files']['heldout']} files "
        f"{man['bytes']['heldout'] / 1e6:.1f} MB, skipped {len(man['skipped'])}")
    write_json(a.work / "metrics_corpus.json", {k: v for k, v in man.items() if k not in ("train", "heldout", "skipped")}
               | {"n_skipped": len(man["skipped"])})


if __name__ == "__main__":
    main()

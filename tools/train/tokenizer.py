"""Trains the tokenizer on the train split and tokenizes both splits.

The tokenizer has the structure of the Gemma 4 fixture tokenizer (shared/fixtures/hf/dense):
SentencePiece-style BPE with byte fallback, normalizer Replace(' ' -> '▁'), no pre-tokenizer,
decoder Replace('▁' -> ' ') + ByteFallback + Fuse, post-processor that adds <bos>; ids 0..13 the
special tokens (<pad> <eos> <bos> <unk> <mask> <|turn> <turn|> <|channel> <channel|> <|tool_call>
<tool_call|> <|tool_response> <tool_response|> <|"|>), 14..269 the byte tokens <0x00>..<0xFF>,
then the learned pieces (alphabet characters first, then merges). Only the 14 specials are
`added_tokens` (as in the fixture); the byte tokens are plain vocabulary entries.

Training pieces: each line together with the newlines before it ('\n\n    def f():'), so merges
may join newline+indentation but never cross into the next line. Because the tokenizer has no
pre-tokenizer, encoding applies the merges over the whole text (as the runtime does).

Checks (raise on failure): structure equal to the fixture tokenizer (when --fixture is given),
no learned piece that the runtime would mistake for a special marker (starting '<|' or ending
'|>'), exact round trip on held-out files, and a from-scratch re-implementation of the runtime's
encoder (crates/target/src/tokenizer.rs: specials matched literally, chars -> ids or byte
tokens, merges lowest rank first, leftmost on ties) giving the same ids as `tokenizers`.

Writes WORK/tokenizer/{tokenizer.json,tokenizer_config.json,special_tokens_map.json} and
WORK/tokens_{train,heldout}.pt ({"ids": int32 stream of [BOS] file [EOS] ..., "offsets"}).

    python tokenizer.py --work OUT/work --vocab-size 4096 [--fixture shared/fixtures/hf/dense]
    python tokenizer.py --work OUT/work --from HF_TARGET_DIR      # reuse a shipped target's tokenizer
"""

from __future__ import annotations

import argparse
import heapq
import json
import re
import time
from pathlib import Path

import torch

from common import (BOS_ID, BYTE_TOKENS, EOS_ID, FIRST_LEARNED_ID, SPECIAL_TOKENS, log, write_json)
from corpus import load_texts

SPACE = "\u2581"

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' "
    "else message['role'] %}<|turn>{{ role }}\n{{ message['content'] | trim }}<turn|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|turn>model\n{% endif %}"
)

TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
    "add_bos_token": True,
    "add_eos_token": False,
    "padding_side": "left",
    "model_max_length": 4096,
    "chat_template": CHAT_TEMPLATE,
}

SPECIAL_TOKENS_MAP = {
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
}


def training_pieces(texts, max_len=256):
    """Lines with their preceding newlines; long lines cut into max_len pieces."""
    for text in texts:
        for m in re.finditer(r"\n*[^\n]*", text):
            s = m.group(0)
            for i in range(0, len(s), max_len):
                if s[i:i + max_len]:
                    yield s[i:i + max_len]


def train(texts, vocab_size, limit_alphabet, max_token_length, min_frequency=2):
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", SPACE)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS + BYTE_TOKENS,
        limit_alphabet=limit_alphabet,
        max_token_length=max_token_length,
        show_progress=False,
    )
    tok.train_from_iterator(training_pieces(texts), trainer)
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    return tok


def finalize_json(tok) -> dict:
    """The tokenizer as JSON in the fixture's form: only the 14 specials as added tokens,
    TemplateProcessing adding <bos>, merges checked and pruned of runtime-special-looking pieces."""
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    for i, t in enumerate(SPECIAL_TOKENS + BYTE_TOKENS):
        assert vocab[t] == i, (t, vocab.get(t), i)
    j["added_tokens"] = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, t in enumerate(SPECIAL_TOKENS)
    ]
    j["pre_tokenizer"] = None
    j["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 0}}],
        "special_tokens": {"<bos>": {"id": "<bos>", "ids": [BOS_ID], "tokens": ["<bos>"]}},
    }
    j["truncation"] = None
    j["padding"] = None
    j["model"]["dropout"] = None
    j["model"]["continuing_subword_prefix"] = None
    j["model"]["end_of_word_suffix"] = None
    j["model"]["ignore_merges"] = False
    j, pruned = prune_markers(j)
    j["_pruned"] = pruned
    return j


def looks_special(t: str) -> bool:
    """The runtime treats non-byte tokens longer than 2 bytes that start with '<|' or end with
    '|>' as special markers matched literally in text; a learned piece must not look like one."""
    return len(t.encode()) > 2 and (t.startswith("<|") or t.endswith("|>"))


def prune_markers(j):
    """Removes learned pieces that look special (and merges building on them), renumbering."""
    vocab = j["model"]["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in j["model"]["merges"]]
    protected = set(SPECIAL_TOKENS + BYTE_TOKENS)
    bad = {t for t in vocab if t not in protected and looks_special(t)}
    if not bad and not any(a + b in protected for a, b in merges):
        j["model"]["merges"] = [list(m) for m in merges]
        return j, []
    changed = True
    while changed:
        changed = False
        keep = []
        for a, b in merges:
            if a + b in protected:
                changed = True
                continue
            if a in bad or b in bad or a + b in bad:
                if a + b not in bad:
                    bad.add(a + b)
                    changed = True
                continue
            keep.append((a, b))
        merges = keep
    order = sorted((i, t) for t, i in vocab.items() if t not in bad)
    j["model"]["vocab"] = {t: n for n, (_, t) in enumerate(order)}
    j["model"]["merges"] = [list(m) for m in merges]
    return j, sorted(bad)


# --------------------------------------------------------------------------------------------
# An independent encoder following the runtime's algorithm, to prove the GGUF path matches.

class RuntimeStyleEncoder:
    def __init__(self, j):
        self.vocab = j["model"]["vocab"]
        self.ranks = {}
        for r, (a, b) in enumerate(j["model"]["merges"]):
            key = (self.vocab[a], self.vocab[b])
            self.ranks.setdefault(key, (r, self.vocab[a + b]))
        id2tok = {i: t for t, i in self.vocab.items()}
        self.specials = sorted(
            [(t, i) for i, t in id2tok.items() if i < len(SPECIAL_TOKENS) or looks_special(t)],
            key=lambda x: -len(x[0]))
        self.byte_ids = [self.vocab[f"<0x{b:02X}>"] for b in range(256)]

    def encode(self, text, add_bos=True):
        out = [BOS_ID] if add_bos else []
        rest = text
        while rest:
            hits = [(rest.find(s), -len(s), i) for s, i in self.specials if s in rest]
            if hits:
                at, neg, i = min(hits)
                out += self._plain(rest[:at])
                out.append(i)
                rest = rest[at - neg:]
            else:
                out += self._plain(rest)
                rest = ""
        return out

    def _plain(self, text):
        syms = []
        for c in text.replace(" ", SPACE):
            if c in self.vocab:
                syms.append(self.vocab[c])
            else:
                syms += [self.byte_ids[b] for b in c.encode()]
        n = len(syms)
        if n < 2:
            return syms
        nxt = list(range(1, n + 1))
        prv = [i - 1 for i in range(n)]
        alive = [True] * n
        heap = []

        def push(l, r):
            m = self.ranks.get((syms[l], syms[r]))
            if m is not None:
                heapq.heappush(heap, (m[0], l))

        for i in range(n - 1):
            push(i, i + 1)
        while heap:
            rank, l = heapq.heappop(heap)
            r = nxt[l]
            if not alive[l] or r >= n:
                continue
            m = self.ranks.get((syms[l], syms[r]))
            if m is None or m[0] != rank:
                continue
            syms[l] = m[1]
            alive[r] = False
            nxt[l] = nxt[r]
            if nxt[r] < n:
                prv[nxt[r]] = l
            if prv[l] >= 0:
                push(prv[l], l)
            if nxt[l] < n:
                push(l, nxt[l])
        return [syms[i] for i in range(n) if alive[i]]


def compare_with_fixture(j, fixture_dir: Path):
    f = json.loads((fixture_dir / "tokenizer.json").read_text())
    problems = []
    for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder", "truncation", "padding", "added_tokens"):
        if j[key] != f[key]:
            problems.append(key)
    for key in ("type", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk",
                "byte_fallback", "ignore_merges"):
        if j["model"].get(key) != f["model"].get(key):
            problems.append("model." + key)
    fv = sorted(f["model"]["vocab"].items(), key=lambda x: x[1])[:FIRST_LEARNED_ID]
    jv = sorted(j["model"]["vocab"].items(), key=lambda x: x[1])[:FIRST_LEARNED_ID]
    if fv != jv:
        problems.append("first 270 ids")
    if type(j["model"]["merges"][0]) is not type(f["model"]["merges"][0]):
        problems.append("merges format")
    if set(j) - {"_pruned"} != set(f):
        problems.append("top-level keys")
    fcfg = json.loads((fixture_dir / "tokenizer_config.json").read_text())
    if fcfg != TOKENIZER_CONFIG:
        problems.append("tokenizer_config.json")
    fmap = json.loads((fixture_dir / "special_tokens_map.json").read_text())
    if fmap != SPECIAL_TOKENS_MAP:
        problems.append("special_tokens_map.json")
    return problems


def tokenize_split(tok, texts):
    ids, offsets = [], []
    enc = tok.encode_batch([t for _, t in texts], add_special_tokens=False)
    for e in enc:
        offsets.append(len(ids))
        ids.append(BOS_ID)
        ids.extend(e.ids)
        ids.append(EOS_ID)
    return {"ids": torch.tensor(ids, dtype=torch.int32), "offsets": torch.tensor(offsets, dtype=torch.int64)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--limit-alphabet", type=int, default=160)
    ap.add_argument("--max-token-length", type=int, default=16)
    ap.add_argument("--fixture", type=Path, default=None, help="fixture HF folder to compare the structure with")
    ap.add_argument("--from", dest="from_dir", type=Path, default=None,
                    help="HF folder whose tokenizer.json is reused instead of training one")
    ap.add_argument("--check-files", type=int, default=40, help="held-out files checked with the runtime-style encoder")
    a = ap.parse_args()
    from tokenizers import Tokenizer

    t0 = time.time()
    train_texts = load_texts(a.work, "train")
    held_texts = load_texts(a.work, "heldout")
    if a.from_dir:  # an existing model's tokenizer (drafters for a shipped target): reused, not retrained
        j = json.loads((a.from_dir / "tokenizer.json").read_text())
        pruned = []
    else:
        tok = train([t for _, t in train_texts], a.vocab_size, a.limit_alphabet, a.max_token_length)
        j = finalize_json(tok)
        pruned = j.pop("_pruned")
    t_train = time.time() - t0
    if pruned:
        log(f"tokenizer: pruned {len(pruned)} pieces that look like special markers: {pruned[:10]}")
    outdir = a.work / "tokenizer"
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "tokenizer.json").write_text(json.dumps(j, indent=1, ensure_ascii=False) + "\n")
    write_json(outdir / "tokenizer_config.json", TOKENIZER_CONFIG)
    write_json(outdir / "special_tokens_map.json", SPECIAL_TOKENS_MAP)
    tok = Tokenizer.from_file(str(outdir / "tokenizer.json"))
    vocab_size = tok.get_vocab_size()
    log(f"tokenizer: {'loaded' if a.from_dir else 'trained'} in {t_train:.1f}s, vocab {vocab_size}, merges {len(j['model']['merges'])}")

    # Checks.
    problems = compare_with_fixture(j, a.fixture) if a.fixture else []
    if problems:
        raise SystemExit(f"tokenizer structure differs from the fixture in: {problems}")
    learned = [t for t, i in j["model"]["vocab"].items() if i >= FIRST_LEARNED_ID]
    assert not [t for t in learned if looks_special(t)]
    assert tok.encode("a b", add_special_tokens=True).ids[0] == BOS_ID
    ref = RuntimeStyleEncoder(j)
    n_checked = n_chars = 0
    samples = [t for _, t in held_texts[: a.check_files]] + [
        "Hello world", "def main(args):\n    return 0\n", "  leading spaces and\ttabs",
        "unicode: héllo wörld ☃ 日本", "<|turn>user\nWrite code<turn|>\n<|turn>model\n",
        "x = [i ** 2 for i in range(10)]", "a <|tool_call> b <eos> c <0x41> d\u2581e",
    ]
    for s in samples:
        hf = tok.encode(s, add_special_tokens=True).ids
        rt = ref.encode(s)
        if hf != rt:
            raise SystemExit(f"runtime-style encoder disagrees with tokenizers on {s[:60]!r}")
        dec = tok.decode(hf, skip_special_tokens=False)
        want = "<bos>" + s.replace("\u2581", " ")
        if dec != want:
            raise SystemExit(f"round trip failed on {s[:60]!r}: {dec[:80]!r}")
        n_checked += 1
        n_chars += len(s)
    log(f"tokenizer: runtime-style encoder and round trip agree on {n_checked} texts ({n_chars} chars)")

    t1 = time.time()
    stats = {}
    for split, texts in (("train", train_texts), ("heldout", held_texts)):
        d = tokenize_split(tok, texts)
        torch.save(d, a.work / f"tokens_{split}.pt")
        n_bytes = sum(len(t.encode()) for _, t in texts)
        stats[split] = {"tokens": int(d["ids"].numel()), "bytes": n_bytes,
                        "bytes_per_token": n_bytes / max(1, d["ids"].numel() - 2 * len(texts))}
        log(f"tokenizer: {split}: {d['ids'].numel()} tokens, {stats[split]['bytes_per_token']:.2f} bytes/token")
    byte_fallback = int(((torch.load(a.work / "tokens_train.pt")["ids"] >= 14) &
                         (torch.load(a.work / "tokens_train.pt")["ids"] < 270)).sum())
    write_json(a.work / "metrics_tokenizer.json", {
        "vocab_size": vocab_size, "merges": len(j["model"]["merges"]),
        "n_alphabet": sum(1 for t in learned if len(t) == 1),
        "limit_alphabet": a.limit_alphabet, "max_token_length": a.max_token_length,
        "pruned_marker_pieces": pruned, "reused_from": str(a.from_dir) if a.from_dir else None, "fixture_structure_match": a.fixture is not None and not problems,
        "runtime_encoder_checked_texts": n_checked, "train_seconds": round(t_train, 2),
        "tokenize_seconds": round(time.time() - t1, 2), "splits": stats,
        "byte_fallback_tokens_in_train": byte_fallback,
        "longest_pieces": sorted(learned, key=len)[-5:],
    })


if __name__ == "__main__":
    main()

"""Checks that a written folder has the layout of the fixture folders in shared/fixtures/hf
(recorded in fixture_layout.json, so the check also runs where shared/ is absent, e.g. on the
GPU machine): the same config.json key structure (recursively; per_layer_config compared per
entry), the same generation_config.json keys, the same tensor names per layer type (layer
indices abstracted) and the same dtype.

    python layout.py OUT/hf            # checks target/, assistant/, dflash/ under it
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

LAYOUT = json.loads((Path(__file__).parent / "fixture_layout.json").read_text())
KIND_DIR = {"dense": "target", "assistant": "assistant", "dflash": "dflash"}
_LAYER = re.compile(r"^(.*?layers)\.(\d+)\.(.*)$")


def _keytree(d):
    if isinstance(d, dict):
        return {k: _keytree(v) for k, v in sorted(d.items())}
    return None


def _diff_keys(got, want, path=""):
    problems = []
    if want is None or got is None:
        return problems
    if path.endswith("per_layer_config"):
        # keys are layer indices; every entry must have the fixture entries' key set
        want_inner = {tuple(sorted(v)) for v in want.values()}
        for k, v in got.items():
            if tuple(sorted(v)) not in want_inner:
                problems.append(f"{path}.{k} keys {sorted(v)} not in {sorted(want_inner)}")
        return problems
    for k in sorted(set(want) - set(got)):
        problems.append(f"missing key {path}.{k}")
    for k in sorted(set(got) - set(want)):
        problems.append(f"extra key {path}.{k}")
    for k in sorted(set(got) & set(want)):
        if isinstance(want[k], dict) or isinstance(got[k], dict):
            if not (isinstance(want[k], dict) and isinstance(got[k], dict)):
                problems.append(f"{path}.{k}: dict vs value")
            else:
                problems += _diff_keys(got[k], want[k], f"{path}.{k}")
    return problems


def config_problems(cfg: dict, kind: str):
    return _diff_keys(_keytree(cfg), LAYOUT[kind]["config_keys"], kind)


def layer_types_of(cfg: dict, kind: str):
    if kind == "assistant":
        return cfg["text_config"]["layer_types"]
    return cfg["layer_types"]


def name_groups(names, layer_types):
    """{'global': names outside layers, '<layer_type>': suffix set} (sets per type must agree)."""
    groups = {"global": set()}
    per_layer = {}
    for n in names:
        m = _LAYER.match(n)
        if not m:
            groups["global"].add(n)
            continue
        i = int(m.group(2))
        per_layer.setdefault(i, set()).add(m.group(1) + ".{i}." + m.group(3))
    problems = []
    for i, s in sorted(per_layer.items()):
        t = layer_types[i]
        if t in groups and groups[t] != s:
            problems.append(f"layer {i} ({t}) tensors differ from other {t} layers")
        groups.setdefault(t, s)
    if sorted(per_layer) != list(range(len(layer_types))):
        problems.append(f"layers present {sorted(per_layer)} vs {len(layer_types)} configured")
    return groups, problems


def tensor_problems(tensors: dict, cfg: dict, kind: str):
    """tensors: name -> (shape, dtype string like 'F32')."""
    want = LAYOUT[kind]
    fixture_cfg_types = layer_types_of(_fixture_cfg_types(kind), kind)
    wg, _ = name_groups(want["tensors"], fixture_cfg_types)
    gg, problems = name_groups(tensors, layer_types_of(cfg, kind))
    for k in sorted(set(wg) | set(gg)):
        if wg.get(k) != gg.get(k):
            problems.append(f"{kind} {k} tensors: missing {sorted((wg.get(k) or set()) - (gg.get(k) or set()))} "
                            f"extra {sorted((gg.get(k) or set()) - (wg.get(k) or set()))}")
    dtypes = {d for _, d in tensors.values()}
    if dtypes != {"F32"}:
        problems.append(f"{kind} dtypes {dtypes}, fixture F32")
    return problems


def _fixture_cfg_types(kind):
    # The fixture layer types, reconstructed from the recorded tensor names (sliding layers own
    # v_proj in `dense`; in the assistant the full layer is the last; dflash layers are all full).
    if kind == "dense":
        return {"layer_types": ["sliding_attention"] * 5 + ["full_attention"]}
    if kind == "assistant":
        return {"text_config": {"layer_types": ["sliding_attention"] * 3 + ["full_attention"]}}
    return {"layer_types": ["full_attention"] * 2}


def check_hf_folder(folder: Path, kind: str):
    from safetensors import safe_open
    folder = Path(folder)
    problems = []
    want = LAYOUT[kind]
    files = sorted(p.name for p in folder.iterdir())
    if files != want["files"]:
        problems.append(f"{kind} files {files} vs fixture {want['files']}")
    cfg = json.loads((folder / "config.json").read_text())
    problems += config_problems(cfg, kind)
    if want["generation_config_keys"] is not None:
        g = json.loads((folder / "generation_config.json").read_text())
        if sorted(g) != want["generation_config_keys"]:
            problems.append(f"{kind} generation_config keys {sorted(g)} vs {want['generation_config_keys']}")
    f = safe_open(str(folder / "model.safetensors"), "pt")
    if f.metadata() != want["safetensors_metadata"]:
        problems.append(f"{kind} safetensors metadata {f.metadata()} vs {want['safetensors_metadata']}")
    tensors = {k: (f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in f.keys()}
    problems += tensor_problems(tensors, cfg, kind)
    return problems


def main():
    root = Path(sys.argv[1])
    bad = False
    for kind, d in KIND_DIR.items():
        if (root / d).exists():
            p = check_hf_folder(root / d, kind)
            print(f"{d}: {'OK' if not p else p}")
            bad |= bool(p)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

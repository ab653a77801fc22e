//! The `general.*` authorship keys gguf-py derives from a checkpoint: the model's name, and
//! the basename, version, finetune and size label its name implies, from `config.json`'s
//! `_name_or_path` (when it is a hub id, not a path) and then the folder's name; the size label
//! otherwise comes from the parameter count (`2.1M`, `4x1.6M` for mixtures of experts).
//!
//! Sampling defaults come from `generation_config.json` (`general.sampling.*`).
//!
//! Not carried over: what gguf-py reads from a model card (`README.md`: license, tags,
//! languages, base models) or from a metadata override file.

use gguf::Value;

use crate::kv::Kv;
use crate::plan::PlannedTensor;

/// Parameter counts as gguf-py's writer measures them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ParamCount {
    /// Every element of every tensor.
    pub total: u64,
    /// Elements outside the expert tensors.
    pub shared: u64,
    /// Elements of one expert, summed over the expert tensors.
    pub expert: u64,
    /// Experts per expert tensor (0: not a mixture of experts).
    pub n_expert: u64,
}

impl ParamCount {
    /// Counts the tensors of a plan.
    pub(crate) fn of(tensors: &[PlannedTensor]) -> ParamCount {
        let mut c = ParamCount::default();
        let (mut expert_sum, mut n_expert_tensors) = (0u64, 0u64);
        for t in tensors {
            let n = t.n_elems();
            if t.name.contains("_exps.") && t.shape.len() >= 3 {
                let experts = t.shape[2].max(1);
                c.expert += n / experts;
                expert_sum += experts;
                n_expert_tensors += 1;
            } else {
                c.shared += n;
            }
            c.total += n;
        }
        c.n_expert = expert_sum.checked_div(n_expert_tensors).unwrap_or(0);
        c
    }

    /// `general.size_label` from the counts.
    pub(crate) fn label(self) -> String {
        if self.n_expert > 0 {
            format!("{}x{}", self.n_expert, rounded(self.shared + self.expert))
        } else {
            rounded(self.total)
        }
    }
}

/// A parameter count in gguf-py's notation: at least two significant digits, `K`/`M`/`B`/`T`.
fn rounded(n: u64) -> String {
    let n = n as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let int_digits = format!("{}", scaled.round_ties_even() as u64);
    let int_digits = int_digits.trim_start_matches('0').len();
    let decimals = 2usize.saturating_sub(int_digits);
    format!("{scaled:.decimals$}{suffix}")
}

/// What a model id says about the model.
#[derive(Clone, Debug, Default, PartialEq)]
struct IdComponents {
    full_name: Option<String>,
    org: Option<String>,
    basename: Option<String>,
    finetune: Option<String>,
    version: Option<String>,
    size_label: Option<String>,
}

/// `generation_config.json` keys and the `general.sampling.*` key each sets: integer or not.
const SAMPLING_KEYS: [(&str, &str, bool); 12] = [
    ("sequence", "sequence", false),
    ("top_k", "top_k", true),
    ("top_p", "top_p", false),
    ("min_p", "min_p", false),
    ("xtc_probability", "xtc_probability", false),
    ("xtc_threshold", "xtc_threshold", false),
    ("temperature", "temp", false),
    ("penalty_last_n", "penalty_last_n", true),
    ("penalty_repeat", "penalty_repeat", false),
    ("mirostat", "mirostat", true),
    ("mirostat_tau", "mirostat_tau", false),
    ("mirostat_eta", "mirostat_eta", false),
];

/// The sampling defaults a `generation_config.json` states (values of the wrong type are
/// skipped).
fn sampling_kv(generation: &serde_json::Value) -> Kv {
    let mut kv = Kv::new();
    for (from, to, integer) in SAMPLING_KEYS {
        let key = format!("general.sampling.{to}");
        match generation.get(from) {
            Some(serde_json::Value::String(s)) if from == "sequence" => kv.set_str(key, s),
            Some(v) if integer => {
                if let Some(n) = v.as_i64().and_then(|n| i32::try_from(n).ok()) {
                    kv.set(key, Value::I32(n));
                }
            }
            Some(v) if from != "sequence" => {
                if let Some(x) = v.as_f64() {
                    kv.set_f32(key, x);
                }
            }
            _ => {}
        }
    }
    kv
}

/// The `general.*` keys gguf-py writes before the model's own: `general.type`, the sampling
/// defaults of `generation_config.json` (when given), the name and what the name implies, then
/// the size label.
pub(crate) fn general_kv(
    name_or_path: Option<&str>,
    folder: &str,
    params: ParamCount,
    generation: Option<&serde_json::Value>,
) -> Kv {
    let total = params.total as i64;
    let mut found = IdComponents::default();
    let sources = name_or_path
        .filter(|id| id.matches('/').count() <= 1)
        .into_iter()
        .chain(std::iter::once(folder));
    for id in sources {
        let c = id_components(id, total);
        let fill = |slot: &mut Option<String>, v: Option<String>| {
            if slot.is_none() {
                *slot = v;
            }
        };
        fill(&mut found.full_name, c.full_name.map(|n| id_to_title(&n)));
        fill(&mut found.org, c.org.map(|o| id_to_title(&o)));
        fill(&mut found.basename, c.basename);
        fill(&mut found.finetune, c.finetune);
        fill(&mut found.version, c.version);
        fill(&mut found.size_label, c.size_label);
    }
    let mut kv = Kv::new();
    kv.set_str("general.type", "model");
    if let Some(generation) = generation {
        kv.extend(sampling_kv(generation));
    }
    kv.set_str("general.name", found.full_name.as_deref().unwrap_or(folder));
    for (key, value) in [
        ("general.version", &found.version),
        ("general.organization", &found.org),
        ("general.finetune", &found.finetune),
        ("general.basename", &found.basename),
    ] {
        if let Some(v) = value {
            kv.set(key, Value::String(v.clone()));
        }
    }
    let size = found
        .size_label
        .or_else(|| (params.total > 0).then(|| params.label()));
    if let Some(size) = size {
        kv.set_str("general.size_label", &size);
    }
    kv
}

/// Title-cases the lowercase words of an id (`gemma-4-e2b` → `Gemma 4 E2b`), leaving versions,
/// numbers and mixed-case words alone.
fn id_to_title(id: &str) -> String {
    id.trim()
        .replace('-', " ")
        .split_whitespace()
        .map(|w| {
            let is_lower = w.chars().any(char::is_lowercase) && !w.chars().any(char::is_uppercase);
            if is_lower && !is_version_or_number(w) {
                python_title(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `v1`, `v1.2.3`, or anything starting with a digit.
fn is_version_or_number(w: &str) -> bool {
    if w.starts_with(|c: char| c.is_ascii_digit()) {
        return true;
    }
    w.strip_prefix('v').is_some_and(is_dotted_number)
}

/// `\d+(\.\d+)*`.
fn is_dotted_number(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Python's `str.title()`: a letter after a non-letter is upper-cased, other letters lowered.
fn python_title(w: &str) -> String {
    let mut out = String::with_capacity(w.len());
    let mut prev_cased = false;
    for c in w.chars() {
        let cased = c.is_lowercase() || c.is_uppercase();
        if cased && !prev_cased {
            out.extend(c.to_uppercase());
        } else if cased {
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
        prev_cased = cased;
    }
    out
}

/// What each `-`-separated part of a name is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PartKind {
    basename: bool,
    size_label: bool,
    finetune: bool,
    version: bool,
    quant_type: bool,
}

impl PartKind {
    fn is_empty(self) -> bool {
        self == PartKind::default()
    }
}

/// gguf-py's reading of a model id such as `google/gemma-4-31B-it`.
fn id_components(id: &str, total_params: i64) -> IdComponents {
    if id.contains(' ') {
        return IdComponents {
            full_name: Some(id.to_string()),
            ..IdComponents::default()
        };
    }
    let (org, full) = match id.split_once('/') {
        Some((org, rest)) => (Some(org).filter(|o| !o.starts_with('.')), rest),
        None => (None, id),
    };
    let mut parts: Vec<String> = full
        .split('-')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    let mut kinds = vec![PartKind::default(); parts.len()];
    for (i, part) in parts.iter_mut().enumerate() {
        let kind = &mut kinds[i];
        if is_version(part) {
            kind.version = true;
        } else if is_quant_type(part) {
            kind.quant_type = true;
            *part = part.to_uppercase();
        } else if i > 0 && is_size(part) {
            let mut p = part.replace('_', ".");
            let bytes: Vec<char> = p.chars().collect();
            if bytes.last().is_some_and(|c| c.is_ascii_digit()) && bytes.len() >= 2 {
                // bloom-7b1 notation: 7b1 → 7.1b.
                let n = bytes.len();
                p = format!(
                    "{}.{}{}",
                    bytes[..n - 2].iter().collect::<String>(),
                    bytes[n - 1],
                    bytes[n - 2]
                );
            }
            let chars: Vec<char> = p.chars().collect();
            let n = chars.len();
            if n > 1 && chars[n - 2].is_ascii_digit() && "kmbt".contains(chars[n - 1]) {
                p = format!(
                    "{}{}",
                    chars[..n - 1].iter().collect::<String>(),
                    chars[n - 1].to_ascii_uppercase()
                );
            }
            if total_params != 0 {
                let chars: Vec<char> = p.chars().collect();
                let n = chars.len();
                let number: String = chars[..n - 1].iter().collect();
                if let Ok(value) = number.parse::<f64>() {
                    let exp = " KMBT".find(chars[n - 1]).map_or(-1, |e| e as i32);
                    let label_params = value * 1000f64.powi(exp);
                    let total = total_params as f64;
                    let too_small =
                        total_params < 0 && label_params < (total_params.abs() / 8) as f64;
                    let far = total_params > 0
                        && (label_params - total).abs() > (7 * total_params / 8) as f64;
                    if too_small || far {
                        kind.finetune = true;
                        p = format!("{}{}", number, chars[n - 1].to_ascii_lowercase());
                    }
                }
            }
            if kind.is_empty() {
                kind.size_label = true;
            }
            *part = p;
        } else if i > 0
            && ["chat", "instruct", "vision", "lora"]
                .iter()
                .any(|w| part.eq_ignore_ascii_case(w))
        {
            if total_params < 0 && part.eq_ignore_ascii_case("lora") {
                kind.quant_type = true;
            } else {
                kind.finetune = true;
            }
        }
    }
    // Word sizes (small, large, ...) do not count when a numeric size is present.
    let numeric_size = parts
        .iter()
        .zip(&kinds)
        .any(|(p, k)| k.size_label && p.chars().any(|c| c.is_ascii_digit()));
    if numeric_size {
        for (p, k) in parts.iter().zip(kinds.iter_mut()) {
            if k.size_label && p.chars().all(char::is_alphabetic) {
                k.size_label = false;
            }
        }
    }
    let mut at_start = true;
    for (p, k) in parts.iter().zip(kinds.iter_mut()) {
        let starts_alpha = p.chars().next().is_some_and(char::is_alphabetic);
        if at_start && ((k.is_empty() && starts_alpha) || k.version) {
            k.basename = true;
        } else {
            at_start = false;
            if k.is_empty() {
                k.finetune = true;
            }
        }
    }
    for k in kinds.iter_mut().rev() {
        let others = PartKind {
            basename: false,
            ..*k
        };
        if k.basename && !others.is_empty() {
            k.basename = false;
        } else {
            break;
        }
    }
    let join = |pick: &dyn Fn(&PartKind) -> bool| {
        let mut picked: Vec<&str> = Vec::new();
        for (p, k) in parts.iter().zip(&kinds) {
            if pick(k) {
                picked.push(p);
            }
        }
        (!picked.is_empty()).then(|| picked.join("-"))
    };
    let mut basename = join(&|k| k.basename);
    let mut sizes: Vec<&str> = Vec::new();
    for (p, k) in parts.iter().zip(&kinds) {
        if k.size_label && !sizes.contains(&p.as_str()) {
            sizes.push(p);
        }
    }
    let size_label = (!sizes.is_empty()).then(|| sizes.join("-"));
    let finetune = join(&|k| k.finetune);
    let version = join(&|k| k.version && !k.basename);
    if size_label.is_none() && finetune.is_none() && version.is_none() {
        basename = None;
    }
    IdComponents {
        full_name: Some(full.to_string()),
        org: org.map(str::to_string),
        basename,
        finetune,
        version,
        size_label,
    }
}

/// `(v|iter)?\d+(\.\d+)*`, any case.
fn is_version(p: &str) -> bool {
    let lower = p.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("iter")
        .or_else(|| lower.strip_prefix('v'))
        .unwrap_or(&lower);
    is_dotted_number(rest) || is_dotted_number(&lower)
}

/// `i?q\d(_\w)*|b?fp?(16|32)`, any case.
fn is_quant_type(p: &str) -> bool {
    let lower = p.to_ascii_lowercase();
    let q = lower.strip_prefix('i').unwrap_or(&lower);
    if let Some(rest) = q.strip_prefix('q') {
        let mut chars = rest.chars();
        if chars.next().is_some_and(|c| c.is_ascii_digit()) {
            let tail: Vec<char> = chars.collect();
            return tail.len().is_multiple_of(2)
                && tail
                    .chunks(2)
                    .all(|c| c[0] == '_' && (c[1].is_alphanumeric() || c[1] == '_'));
        }
    }
    let f = lower.strip_prefix('b').unwrap_or(&lower);
    let Some(f) = f.strip_prefix('f') else {
        return false;
    };
    let bits = f.strip_prefix('p').unwrap_or(f);
    bits == "16" || bits == "32"
}

/// `(([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl)`, any case.
fn is_size(p: &str) -> bool {
    let lower = p.to_ascii_lowercase();
    if ["small", "mini", "medium", "large", "xl", "xxl"].contains(&lower.as_str()) {
        return true;
    }
    let b = lower.as_bytes();
    let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    // The body after an optional prefix: \d+([._]\d+)?[kmbt]\d?
    let body = |mut i: usize| -> bool {
        let n = digits(i);
        if n == 0 {
            return false;
        }
        i += n;
        if i < b.len() && (b[i] == b'.' || b[i] == b'_') {
            let m = digits(i + 1);
            if m > 0 {
                i += 1 + m;
            }
        }
        if i >= b.len() || !b"kmbt".contains(&b[i]) {
            return false;
        }
        i += 1;
        i == b.len() || (i + 1 == b.len() && b[i].is_ascii_digit())
    };
    if body(0) {
        return true;
    }
    if b.first() == Some(&b'a') && body(1) {
        return true;
    }
    let n = digits(0);
    n > 0 && b.get(n) == Some(&b'x') && body(n + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_become_titles() {
        assert_eq!(id_to_title("dense"), "Dense");
        assert_eq!(id_to_title("assistant_e"), "Assistant_E");
        assert_eq!(id_to_title("gemma-4-31b-it"), "Gemma 4 31b It");
        assert_eq!(id_to_title("v2-model"), "v2 Model");
    }

    #[test]
    fn hub_ids_split_into_components() {
        let c = id_components("google/gemma-4-31B-it", 31_000_000_000);
        assert_eq!(c.org.as_deref(), Some("google"));
        assert_eq!(c.basename.as_deref(), Some("gemma-4"));
        assert_eq!(c.size_label.as_deref(), Some("31B"));
        assert_eq!(c.finetune.as_deref(), Some("it"));
        assert_eq!(c.version, None);
        let plain = id_components("dense", 2_000_000);
        assert_eq!(plain.full_name.as_deref(), Some("dense"));
        assert_eq!(plain.basename, None);
        let moe = id_components("gemma-4-26B-A4B-it", 26_000_000_000);
        assert_eq!(moe.size_label.as_deref(), Some("26B-A4B"));
    }

    #[test]
    fn size_labels_round_like_gguf_py() {
        assert_eq!(rounded(2_097_664), "2.1M");
        assert_eq!(rounded(789_000), "789K");
        assert_eq!(rounded(30_700_000_000), "31B");
        assert_eq!(rounded(1_200_000_000), "1.2B");
    }

    #[test]
    fn name_patterns() {
        assert!(
            is_size("31B")
                && is_size("8x7b")
                && is_size("a4b")
                && is_size("7b1")
                && is_size("1.5B")
        );
        assert!(!is_size("e2b") && !is_size("it") && !is_size("b"));
        assert!(is_quant_type("Q4_K_M") && is_quant_type("bf16") && is_quant_type("fp32"));
        assert!(!is_quant_type("q") && !is_quant_type("f8"));
        assert!(is_version("v1.2") && is_version("4") && is_version("iter3") && !is_version("v"));
    }
}

//! The `tokenizer.*` keys of a Gemma 4 GGUF, from a checkpoint's `tokenizer.json` and its
//! companions, as llama.cpp's converter writes them (`tokenizer.ggml.model = gemma4`).
//!
//! Tokens are the BPE vocabulary in id order, then added tokens beyond it; every score is
//! −1000; a token is BYTE when it reads `<0xNN>`, CONTROL when it is one of the tokenizer's
//! special tokens (the named ones — bos, eos, unk, sep, pad, cls, mask — and the additional or
//! extra special tokens of `tokenizer_config.json`), NORMAL otherwise, except the channel,
//! tool-call and quote markers, which are USER_DEFINED so that they are always rendered.
//! Merges, special ids, the add-bos/eos flags and the chat template follow in
//! [`crate::special_vocab`].

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use gguf::{Array, Value};
use serde_json::Map;

use crate::error::{Error, Result};
use crate::hparams::{read_json, read_json_if_present};
use crate::kv::Kv;
use crate::special_vocab::SpecialVocab;

/// gguf token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// Tokens Gemma 4's chat parser must always see rendered.
const VISIBLE_TOKENS: [&str; 7] = [
    "<|channel>",
    "<channel|>",
    "<|tool_call>",
    "<tool_call|>",
    "<|tool_response>",
    "<tool_response|>",
    "<|\"|>",
];

/// The special-token names transformers knows.
const NAMED_SPECIALS: [&str; 7] = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"];

/// The tokenizer files of a checkpoint folder.
pub(crate) struct TokenizerFiles {
    /// The folder.
    pub dir: PathBuf,
    /// `tokenizer.json`'s path.
    pub json_path: PathBuf,
    /// `tokenizer.json`.
    pub json: serde_json::Value,
    /// `tokenizer_config.json`, if present.
    pub config: Option<Map<String, serde_json::Value>>,
}

impl TokenizerFiles {
    /// Reads the tokenizer files of `dir`; `tokenizer.json` is required.
    pub(crate) fn load(dir: &Path) -> Result<TokenizerFiles> {
        let json_path = dir.join("tokenizer.json");
        if !json_path.is_file() {
            return Err(Error::invalid(
                &json_path,
                "not found: the converter needs the model's fast tokenizer (tokenizer.json)",
            ));
        }
        let json = read_json(&json_path)?;
        let config_path = dir.join("tokenizer_config.json");
        let config = match read_json_if_present(&config_path)? {
            None => None,
            Some(serde_json::Value::Object(map)) => Some(map),
            Some(_) => return Err(Error::invalid(&config_path, "expected a JSON object")),
        };
        Ok(TokenizerFiles {
            dir: dir.to_path_buf(),
            json_path,
            json,
            config,
        })
    }

    fn error(&self, reason: impl Into<String>) -> Error {
        Error::invalid(&self.json_path, reason)
    }

    /// The BPE vocabulary (`model.vocab`).
    fn vocab(&self) -> Result<&Map<String, serde_json::Value>> {
        self.json
            .pointer("/model/vocab")
            .and_then(|v| v.as_object())
            .ok_or_else(|| self.error("no 'model.vocab' object"))
    }

    /// `added_tokens` as (id, content) pairs.
    pub(crate) fn added_tokens(&self) -> Result<Vec<(u32, String)>> {
        let Some(items) = self.json.get("added_tokens") else {
            return Ok(Vec::new());
        };
        let items = items
            .as_array()
            .ok_or_else(|| self.error("'added_tokens' is not an array"))?;
        items
            .iter()
            .map(|t| {
                let id = t
                    .get("id")
                    .and_then(|v| v.as_u64())
                    .and_then(|v| u32::try_from(v).ok());
                let content = t.get("content").and_then(|v| v.as_str());
                id.zip(content)
                    .map(|(id, c)| (id, c.to_string()))
                    .ok_or_else(|| self.error(format!("added token {t} lacks an id or content")))
            })
            .collect()
    }

    /// Rows of the embedding the tokenizer accounts for: vocabulary entries plus added tokens
    /// (llama.cpp's converter drops embedding rows beyond this).
    pub(crate) fn embedding_rows(&self) -> Result<u64> {
        Ok((self.vocab()?.len() + self.added_tokens()?.len()) as u64)
    }

    /// The content of the special tokens the tokenizer declares.
    fn special_contents(&self) -> Result<HashSet<String>> {
        let mut out = HashSet::new();
        let mut maps = Vec::new();
        if let Some(c) = &self.config {
            maps.push(c.clone());
        }
        if let Some(serde_json::Value::Object(m)) =
            read_json_if_present(&self.dir.join("special_tokens_map.json"))?
        {
            maps.push(m);
        }
        for map in &maps {
            for typ in NAMED_SPECIALS {
                if let Some(c) = map.get(&format!("{typ}_token")).and_then(token_content) {
                    out.insert(c);
                }
            }
            for key in ["additional_special_tokens", "extra_special_tokens"] {
                match map.get(key) {
                    Some(serde_json::Value::Array(items)) => {
                        out.extend(items.iter().filter_map(token_content))
                    }
                    Some(serde_json::Value::Object(named)) => {
                        out.extend(named.values().filter_map(token_content))
                    }
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// The Gemma 4 `tokenizer.*` keys.
    pub(crate) fn gemma4_kv(&self) -> Result<Kv> {
        let model = self
            .json
            .get("model")
            .ok_or_else(|| self.error("no 'model' object"))?;
        let is_bpe = model.get("type").and_then(|v| v.as_str()) == Some("BPE");
        let byte_fallback = model.get("byte_fallback").and_then(|v| v.as_bool()) == Some(true);
        let decoder = self.json.pointer("/decoder/type").and_then(|v| v.as_str());
        if !is_bpe || !byte_fallback || decoder != Some("Sequence") {
            return Err(self.error(
                "not a BPE tokenizer with byte fallback and a Sequence decoder (Gemma 4's kind)",
            ));
        }
        let vocab = self.vocab()?;
        let n_base = vocab.len();
        let mut by_id: HashMap<u64, &str> = HashMap::with_capacity(n_base);
        for (token, id) in vocab {
            let id = id
                .as_u64()
                .ok_or_else(|| self.error(format!("vocab entry '{token}' has a bad id {id}")))?;
            by_id.insert(id, token);
        }
        let added = self.added_tokens()?;
        for (id, content) in &added {
            by_id.entry(u64::from(*id)).or_insert(content);
        }
        let specials = self.special_contents()?;
        let special_ids: HashSet<u64> = specials
            .iter()
            .filter_map(|s| {
                vocab.get(s).and_then(|v| v.as_u64()).or_else(|| {
                    added
                        .iter()
                        .find(|(_, c)| c == s)
                        .map(|(id, _)| u64::from(*id))
                })
            })
            .collect();
        let mut tokens = Vec::with_capacity(n_base);
        let mut types = Vec::with_capacity(n_base);
        for id in 0..n_base as u64 {
            let text = by_id.get(&id).ok_or_else(|| {
                self.error(format!(
                    "no token has id {id} (the vocabulary has {n_base} entries)"
                ))
            })?;
            tokens.push(text.to_string());
            types.push(if is_byte_token(text) {
                BYTE
            } else if special_ids.contains(&id) {
                CONTROL
            } else {
                NORMAL
            });
        }
        let mut beyond: Vec<&(u32, String)> = added
            .iter()
            .filter(|(id, _)| *id as usize >= n_base)
            .collect();
        beyond.sort_by_key(|(id, _)| *id);
        for (i, (id, content)) in beyond.iter().enumerate() {
            if *id as usize != n_base + i {
                return Err(self.error(format!(
                    "added token '{content}' has id {id}; ids beyond the {n_base}-token vocabulary must follow it without gaps"
                )));
            }
            tokens.push(content.clone());
            types.push(if specials.contains(content) {
                CONTROL
            } else {
                USER_DEFINED
            });
        }
        for (token, ty) in tokens.iter().zip(types.iter_mut()) {
            if VISIBLE_TOKENS.contains(&token.as_str()) {
                *ty = USER_DEFINED;
            }
        }
        let n_tokens = tokens.len();
        let mut kv = Kv::new();
        kv.set_str("tokenizer.ggml.model", "gemma4");
        kv.set("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)));
        kv.set(
            "tokenizer.ggml.scores",
            Value::Array(Array::F32(vec![-1000.0; n_tokens])),
        );
        kv.set("tokenizer.ggml.token_type", Value::Array(Array::I32(types)));
        SpecialVocab::load(self)?.write(&mut kv);
        kv.set("tokenizer.ggml.add_space_prefix", Value::Bool(false));
        kv.set("tokenizer.ggml.add_bos_token", Value::Bool(true));
        Ok(kv)
    }
}

/// The content of a special-token entry: a string, or an object with a string `content`.
pub(crate) fn token_content(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    }
}

/// `<0xNN>` with two hex digits.
fn is_byte_token(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 6
        && b.starts_with(b"<0x")
        && b[5] == b'>'
        && b[3].is_ascii_hexdigit()
        && b[4].is_ascii_hexdigit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokens_are_exactly_two_hex_digits() {
        assert!(is_byte_token("<0x0A>"));
        assert!(is_byte_token("<0xff>"));
        assert!(!is_byte_token("<0x0A0>"));
        assert!(!is_byte_token("<0xG1>"));
        assert!(!is_byte_token("0x0A"));
    }
}

//! The Gemma 4 tokenizer, built from GGUF metadata (`tokenizer.ggml.*`, model `gemma4`):
//! SentencePiece-style BPE over characters with `▁` for spaces, byte fallback (`<0xXX>`
//! tokens), merges applied lowest rank first, and special tokens matched literally in the text.
//! Chat templates (`tokenizer.chat_template`) are rendered with a real Jinja engine.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use gguf::GgufFile;

use crate::config::file_name;
use crate::error::{Error, Result};

/// SentencePiece's replacement for a space.
const SPACE: char = '▁';

/// GGUF token types.
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_BYTE: i32 = 6;

/// One chat message for [`Tokenizer::apply_chat_template`].
#[derive(Clone, Debug)]
pub struct ChatMessage {
    /// `user`, `assistant`/`model` or `system`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A Gemma 4 tokenizer.
#[derive(Debug)]
pub struct Tokenizer {
    tokens: Vec<String>,
    token_type: Vec<i32>,
    vocab: HashMap<String, u32>,
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Tokens matched literally in text, longest first.
    specials: Vec<(String, u32)>,
    byte_tokens: [Option<u32>; 256],
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
    end_of_generation: Vec<u32>,
    chat_template: Option<String>,
}

impl Tokenizer {
    /// Reads the tokenizer stored in `file`.
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer> {
        let name = file_name(file);
        let bad = |reason: String| Error::Config {
            file: name.clone(),
            reason,
        };
        let model: &str = file.get_as("tokenizer.ggml.model")?;
        if model != "gemma4" {
            return Err(bad(format!("tokenizer.ggml.model is '{model}'; only 'gemma4' (SentencePiece-style BPE) is supported")));
        }
        let tokens: Vec<String> = file
            .get_as::<gguf::MetaArray>("tokenizer.ggml.tokens")?
            .strings()
            .ok_or_else(|| bad("tokenizer.ggml.tokens is not a string array".into()))?
            .map(str::to_string)
            .collect();
        let n = tokens.len();
        let token_type: Vec<i32> = match file.get_opt::<Vec<i32>>("tokenizer.ggml.token_type")? {
            Some(t) if t.len() == n => t,
            Some(t) => {
                return Err(bad(format!(
                    "tokenizer.ggml.token_type has {} entries for {n} tokens",
                    t.len()
                )))
            }
            None => vec![1; n],
        };
        let mut vocab = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            vocab.entry(t.clone()).or_insert(i as u32);
        }
        let mut merges = HashMap::new();
        if let Some(list) = file.get_opt::<gguf::MetaArray>("tokenizer.ggml.merges")? {
            let list = list
                .strings()
                .ok_or_else(|| bad("tokenizer.ggml.merges is not a string array".into()))?;
            for (rank, m) in list.enumerate() {
                let (a, b) = m
                    .split_once(' ')
                    .ok_or_else(|| bad(format!("merge #{rank} '{m}' has no space")))?;
                let (Some(&ia), Some(&ib), Some(&iab)) =
                    (vocab.get(a), vocab.get(b), vocab.get(&format!("{a}{b}")))
                else {
                    return Err(bad(format!(
                        "merge #{rank} '{m}' names a token that is not in the vocabulary"
                    )));
                };
                merges.entry((ia, ib)).or_insert((rank as u32, iab));
            }
        }
        let mut specials: Vec<(String, u32)> = tokens
            .iter()
            .enumerate()
            .filter(|&(i, t)| {
                let ty = token_type[i];
                // Control and user-defined tokens, and Gemma's `<|…>` / `<…|>` markers (stored
                // as normal tokens but added tokens in the reference tokenizer).
                ty == TYPE_CONTROL
                    || ty == TYPE_USER_DEFINED
                    || (ty != TYPE_BYTE
                        && t.len() > 2
                        && (t.starts_with("<|") || t.ends_with("|>")))
            })
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        specials.sort_by_key(|(t, _)| Reverse(t.len()));
        let mut byte_tokens = [None; 256];
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            *slot = vocab.get(&format!("<0x{b:02X}>")).copied();
        }
        let id = |key: &str| -> Result<Option<u32>> {
            Ok(match file.get_opt::<usize>(key)? {
                Some(i) if i < n => Some(i as u32),
                Some(i) => {
                    return Err(bad(format!(
                        "{key} = {i} is outside the vocabulary of {n} tokens"
                    )))
                }
                None => None,
            })
        };
        let eos = id("tokenizer.ggml.eos_token_id")?;
        let mut end_of_generation: Vec<u32> = eos.into_iter().collect();
        // Gemma's end-of-turn marker also ends generation.
        end_of_generation.extend(vocab.get("<turn|>").copied());
        Ok(Tokenizer {
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            add_bos: file
                .get_opt::<bool>("tokenizer.ggml.add_bos_token")?
                .unwrap_or(true),
            chat_template: file
                .get_opt::<&str>("tokenizer.chat_template")?
                .map(str::to_string),
            tokens,
            token_type,
            vocab,
            merges,
            specials,
            byte_tokens,
            end_of_generation,
        })
    }

    /// Vocabulary size.
    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    /// The beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether the model adds BOS to a prompt.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `id` ends generation (EOS, end of turn).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.contains(&id)
    }

    /// Tokenizes `text`; prepends BOS when `add_bos` and the model has one. Special tokens
    /// written in the text (`<|turn>`) become their ids.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        if add_bos {
            out.extend(self.bos);
        }
        let mut rest = text;
        while !rest.is_empty() {
            // The earliest special token, longest at that position.
            let hit = self
                .specials
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|at| (at, Reverse(s.len()), *id)))
                .min();
            match hit {
                Some((at, Reverse(len), id)) => {
                    self.encode_plain(&rest[..at], &mut out)?;
                    out.push(id);
                    rest = &rest[at + len..];
                }
                None => {
                    self.encode_plain(rest, &mut out)?;
                    rest = "";
                }
            }
        }
        Ok(out)
    }

    /// BPE over a segment without special tokens.
    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let normalized: String = text
            .chars()
            .map(|c| if c == ' ' { SPACE } else { c })
            .collect();
        let mut syms: Vec<u32> = Vec::with_capacity(normalized.len());
        let mut buf = [0u8; 4];
        for c in normalized.chars() {
            match self.vocab.get(c.encode_utf8(&mut buf) as &str) {
                Some(&id) => syms.push(id),
                None => {
                    for &b in c.encode_utf8(&mut buf).as_bytes() {
                        let id = self.byte_tokens[b as usize].or(self.unk).ok_or_else(|| {
                            Error::Input(format!(
                                "character {c:?} has no token, no byte token and no <unk>"
                            ))
                        })?;
                        syms.push(id);
                    }
                }
            }
        }
        out.extend(self.merge(syms));
        Ok(())
    }

    /// Applies merges lowest rank first (leftmost among equal ranks) until none applies.
    fn merge(&self, ids: Vec<u32>) -> Vec<u32> {
        let n = ids.len();
        let mut id = ids;
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        let push =
            |heap: &mut BinaryHeap<Reverse<(u32, usize)>>, id: &[u32], l: usize, r: usize| {
                if let Some(&(rank, _)) = self.merges.get(&(id[l], id[r])) {
                    heap.push(Reverse((rank, l)));
                }
            };
        for i in 0..n.saturating_sub(1) {
            push(&mut heap, &id, i, i + 1);
        }
        while let Some(Reverse((rank, l))) = heap.pop() {
            let r = next[l];
            if !alive[l] || r >= n {
                continue;
            }
            match self.merges.get(&(id[l], id[r])) {
                Some(&(rk, merged)) if rk == rank => {
                    id[l] = merged;
                    alive[r] = false;
                    next[l] = next[r];
                    if next[r] < n {
                        prev[next[r]] = l;
                    }
                    if prev[l] < n {
                        push(&mut heap, &id, prev[l], l);
                    }
                    if next[l] < n {
                        push(&mut heap, &id, l, next[l]);
                    }
                }
                _ => {}
            }
        }
        (0..n).filter(|&i| alive[i]).map(|i| id[i]).collect()
    }

    /// The bytes token `id` stands for (`▁` as a space, byte tokens as their byte).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(t) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        if self.token_type[id as usize] == TYPE_BYTE {
            if let Some(b) = t
                .strip_prefix("<0x")
                .and_then(|h| h.strip_suffix('>'))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                return vec![b];
            }
        }
        t.replace(SPACE, " ").into_bytes()
    }

    /// Text of `ids` (invalid UTF-8 from partial byte sequences is replaced).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.token_bytes(id)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Renders the model's chat template for `messages`, ending with the model's turn opener
    /// when `add_generation_prompt`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            Error::Template("the model file has no tokenizer.chat_template".into())
        })?;
        let mut env = minijinja::Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", template)
            .map_err(|e| Error::Template(e.to_string()))?;
        let token_text = |id: Option<u32>| {
            id.and_then(|i| self.tokens.get(i as usize))
                .cloned()
                .unwrap_or_default()
        };
        let messages: Vec<minijinja::Value> = messages
            .iter()
            .map(|m| minijinja::context! { role => m.role.clone(), content => m.content.clone() })
            .collect();
        env.get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => messages,
                    add_generation_prompt => add_generation_prompt,
                    bos_token => token_text(self.bos),
                    eos_token => token_text(self.eos),
                })
            })
            .map_err(|e| Error::Template(e.to_string()))
    }
}

//! Merges, special token ids, add-bos/eos/sep flags and the chat template, read the way
//! gguf-py's `SpecialVocab` reads them:
//!
//! - merges from `tokenizer.json` (pairs joined by a space; a space inside a piece is written
//!   as U+0120);
//! - the add flags first from the post-processor template (`TemplateProcessing`: a leading
//!   special token means add-bos, a trailing one add-eos — an eos other than the configured
//!   one makes the configured one the end-of-turn token), then from `add_*_token` of
//!   `tokenizer_config.json`;
//! - each special token's id from the added token whose content is `tokenizer_config.json`'s
//!   `*_token`, then, for those still unset, from `config.json`'s `*_token_id` (or its
//!   `text_config`'s);
//! - the chat template from `tokenizer_config.json`, else `chat_template.jinja` (plus
//!   `additional_chat_templates/*.jinja`), else `chat_template.json`.

use std::path::Path;

use gguf::{Array, Value};
use serde_json::{Map, Value as Json};

use crate::error::{Error, Result};
use crate::hparams::read_json_if_present;
use crate::kv::Kv;
use crate::tokenizer::{token_content, TokenizerFiles};

/// What `SpecialVocab` found, in the order it writes it.
#[derive(Debug, Default)]
pub(crate) struct SpecialVocab {
    merges: Vec<String>,
    ids: Vec<(String, u32)>,
    add: Vec<(String, bool)>,
    templates: Option<ChatTemplate>,
}

/// A chat template: one string, or named templates.
#[derive(Debug)]
enum ChatTemplate {
    Single(String),
    Named(Vec<(String, String)>),
}

/// Python truthiness of a JSON value (`None`, `""`, `0`, `[]`, `{}` are false).
fn truthy(v: Option<&Json>) -> bool {
    match v {
        None | Some(Json::Null) => false,
        Some(Json::Bool(b)) => *b,
        Some(Json::String(s)) => !s.is_empty(),
        Some(Json::Number(n)) => n.as_f64() != Some(0.0),
        Some(Json::Array(a)) => !a.is_empty(),
        Some(Json::Object(o)) => !o.is_empty(),
    }
}

/// `entry['SpecialToken']['id']` of a template entry.
fn special_id(entry: Option<&Json>) -> Option<Json> {
    entry
        .and_then(|e| e.pointer("/SpecialToken/id"))
        .filter(|v| truthy(Some(v)))
        .cloned()
}

/// `entry['Sequence']['id']` of a template entry.
fn sequence_id(entry: Option<&Json>) -> Option<&str> {
    entry
        .and_then(|e| e.pointer("/Sequence/id"))
        .and_then(Json::as_str)
}

impl SpecialVocab {
    /// Reads everything from the tokenizer's folder.
    pub(crate) fn load(files: &TokenizerFiles) -> Result<SpecialVocab> {
        let mut out = SpecialVocab {
            merges: merges(files)?,
            ..SpecialVocab::default()
        };
        let mut types: Vec<&str> = vec!["bos", "eos", "unk", "sep", "pad", "cls", "mask"];
        // An empty tokenizer_config.json counts as none, as in gguf-py.
        let mut config = files.config.clone().filter(|c| !c.is_empty());
        out.read_post_processor(files, &mut config, &mut types);
        if let Some(config) = &config {
            out.templates = chat_template(&files.dir, config)?;
            let added = files.added_tokens()?;
            for typ in &types {
                if let Some(Json::Bool(b)) = config.get(&format!("add_{typ}_token")) {
                    out.set_add(typ, *b);
                }
                let Some(content) = config.get(&format!("{typ}_token")).and_then(token_content)
                else {
                    continue;
                };
                if let Some((id, _)) = added.iter().find(|(_, c)| *c == content) {
                    out.set_id(typ, *id);
                }
            }
        }
        let config_path = files.dir.join("config.json");
        if let Some(Json::Object(model)) = read_json_if_present(&config_path)? {
            for typ in &types {
                let key = format!("{typ}_token_id");
                let value = model
                    .get(&key)
                    .filter(|v| !v.is_null())
                    .or_else(|| model.get("text_config").and_then(|t| t.get(&key)));
                match value {
                    Some(Json::Number(n)) if n.is_u64() => {
                        let id =
                            n.as_u64()
                                .and_then(|v| u32::try_from(v).ok())
                                .ok_or_else(|| {
                                    Error::invalid(
                                        &config_path,
                                        format!("key '{key}' = {n} is out of range"),
                                    )
                                })?;
                        out.set_id(typ, id);
                    }
                    Some(Json::Number(n)) if n.is_i64() => {
                        return Err(Error::invalid(
                            &config_path,
                            format!("key '{key}' = {n} is negative"),
                        ))
                    }
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    fn set_id(&mut self, typ: &str, id: u32) {
        if !self.ids.iter().any(|(t, _)| t == typ) {
            self.ids.push((typ.to_string(), id));
        }
    }

    fn set_add(&mut self, typ: &str, value: bool) {
        match self.add.iter_mut().find(|(t, _)| t == typ) {
            Some(entry) => entry.1 = value,
            None => self.add.push((typ.to_string(), value)),
        }
    }

    /// The add flags a `TemplateProcessing` (or `RobertaProcessing`) post-processor implies.
    fn read_post_processor(
        &mut self,
        files: &TokenizerFiles,
        config: &mut Option<Map<String, Json>>,
        types: &mut Vec<&str>,
    ) {
        let get =
            |c: &Option<Map<String, Json>>, k: &str| c.as_ref().and_then(|c| c.get(k)).cloned();
        let mut bos = get(config, "bos_token");
        let mut cls = get(config, "cls_token");
        let mut eos = get(config, "eos_token");
        let mut sep = get(config, "sep_token");
        if let Some(c) = config.as_mut() {
            if !truthy(bos.as_ref()) && truthy(cls.as_ref()) {
                bos = cls.clone();
                c.insert("bos_token".into(), cls.clone().unwrap_or(Json::Null));
            }
            if !truthy(eos.as_ref()) && truthy(sep.as_ref()) {
                eos = sep.clone();
                c.insert("eos_token".into(), sep.clone().unwrap_or(Json::Null));
            }
        }
        let Some(post) = files.json.get("post_processor").filter(|p| truthy(Some(p))) else {
            return;
        };
        let processors = match post.get("processors").and_then(Json::as_array) {
            Some(list) => list.clone(),
            None => vec![post.clone()],
        };
        for processor in &processors {
            match processor.get("type").and_then(Json::as_str) {
                Some("RobertaProcessing") => {
                    for typ in ["bos", "eos", "sep"] {
                        self.set_add(typ, true);
                    }
                    if let Some(c) = config.as_mut() {
                        if !truthy(cls.as_ref()) {
                            cls = processor.pointer("/cls/0").cloned().or(bos.clone());
                            c.insert("cls_token".into(), cls.clone().unwrap_or(Json::Null));
                        }
                        if !truthy(sep.as_ref()) {
                            sep = processor.pointer("/sep/0").cloned().or(eos.clone());
                            c.insert("sep_token".into(), sep.clone().unwrap_or(Json::Null));
                        }
                    }
                }
                Some("TemplateProcessing") => {
                    let empty = Vec::new();
                    let single = processor
                        .get("single")
                        .and_then(Json::as_array)
                        .unwrap_or(&empty);
                    let pair = processor
                        .get("pair")
                        .and_then(Json::as_array)
                        .unwrap_or(&empty);
                    let (mut first, mut last) = (None, None);
                    if single.len() > 1 {
                        first = special_id(single.first());
                        if let Some(f) = &first {
                            if config.is_none() {
                                bos = Some(f.clone());
                            }
                            self.set_add("bos", Some(f) == bos.as_ref() || Some(f) == cls.as_ref());
                        }
                        last = special_id(single.last());
                        if let Some(l) = &last {
                            match config.as_mut() {
                                None => eos = Some(l.clone()),
                                Some(c) if Some(l) != eos.as_ref() => {
                                    let old = eos.clone().unwrap_or(Json::Null);
                                    if !types.contains(&"eot") {
                                        types.push("eot");
                                        c.insert("eot_token".into(), old);
                                    } else if !types.contains(&"eom") {
                                        types.push("eom");
                                        c.insert("eom_token".into(), old);
                                    }
                                    c.insert("eos_token".into(), l.clone());
                                    eos = Some(l.clone());
                                }
                                Some(_) => {}
                            }
                            self.set_add("eos", Some(l) == eos.as_ref());
                        }
                    }
                    if !pair.is_empty() {
                        let start =
                            usize::from(first.is_some() && special_id(pair.first()) == first);
                        let stop = if last.is_some() && special_id(pair.last()) == last {
                            pair.len() - 1
                        } else {
                            pair.len()
                        };
                        let middle = pair.get(start..stop.max(start)).unwrap_or(&[]);
                        let (a, b) = (sequence_id(middle.first()), sequence_id(middle.last()));
                        if a == Some("A") && b == Some("B") && middle.len() > 2 {
                            let inner = &middle[1..middle.len() - 1];
                            let is_sep_or_eos =
                                |v: &Json| Some(v) == sep.as_ref() || Some(v) == eos.as_ref();
                            let mut add_sep = false;
                            if let Some(e) = special_id(inner.first()) {
                                add_sep |= is_sep_or_eos(&e) && last.is_none();
                            }
                            if inner.len() == 2 {
                                if let Some(e) = special_id(inner.get(1)) {
                                    add_sep |= is_sep_or_eos(&e);
                                }
                            }
                            self.set_add("sep", add_sep);
                            if let Some(c) = config.as_mut() {
                                if add_sep && !truthy(sep.as_ref()) {
                                    c.insert("sep_token".into(), eos.clone().unwrap_or(Json::Null));
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Appends the keys, in gguf-py's order.
    pub(crate) fn write(self, kv: &mut Kv) {
        if !self.merges.is_empty() {
            kv.set(
                "tokenizer.ggml.merges",
                Value::Array(Array::String(self.merges)),
            );
        }
        for (typ, id) in self.ids {
            let key = match typ.as_str() {
                "bos" => "bos_token_id",
                "eos" => "eos_token_id",
                "unk" => "unknown_token_id",
                "sep" => "seperator_token_id",
                "pad" => "padding_token_id",
                "mask" => "mask_token_id",
                "eot" => "eot_token_id",
                "eom" => "eom_token_id",
                // gguf-py has no key for a cls id and skips it.
                _ => continue,
            };
            kv.set(format!("tokenizer.ggml.{key}"), Value::U32(id));
        }
        for (typ, value) in self.add {
            if matches!(typ.as_str(), "bos" | "eos" | "sep") {
                kv.set(
                    format!("tokenizer.ggml.add_{typ}_token"),
                    Value::Bool(value),
                );
            }
        }
        match self.templates {
            None => {}
            Some(ChatTemplate::Single(t)) => kv.set_str("tokenizer.chat_template", &t),
            Some(ChatTemplate::Named(list)) => {
                let mut default = None;
                let mut names = Vec::new();
                for (name, template) in list {
                    let name: String = name
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                        .collect();
                    if name.is_empty() {
                        continue;
                    }
                    if name == "default" {
                        default = Some(template);
                    } else {
                        kv.set_str(format!("tokenizer.chat_template.{name}"), &template);
                        if !names.contains(&name) {
                            names.push(name);
                        }
                    }
                }
                if !names.is_empty() {
                    kv.set(
                        "tokenizer.chat_templates",
                        Value::Array(Array::String(names)),
                    );
                }
                if let Some(t) = default {
                    kv.set_str("tokenizer.chat_template", &t);
                }
            }
        }
    }
}

/// `model.merges` of `tokenizer.json`, as "a b" strings.
fn merges(files: &TokenizerFiles) -> Result<Vec<String>> {
    let Some(list) = files.json.pointer("/model/merges").and_then(Json::as_array) else {
        return Ok(Vec::new());
    };
    let bad = || {
        Error::invalid(
            &files.json_path,
            "'model.merges' is neither strings nor pairs of strings",
        )
    };
    list.iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(pair) if pair.len() == 2 => {
                let parts = pair
                    .iter()
                    .map(|p| p.as_str().map(|s| s.replace(' ', "\u{120}")))
                    .collect::<Option<Vec<String>>>()
                    .ok_or_else(bad)?;
                Ok(parts.join(" "))
            }
            _ => Err(bad()),
        })
        .collect()
}

/// The chat template(s), by gguf-py's precedence.
fn chat_template(dir: &Path, config: &Map<String, Json>) -> Result<Option<ChatTemplate>> {
    let read = |path: &Path| std::fs::read_to_string(path).map_err(|e| Error::io(path, e));
    let jinja = dir.join("chat_template.jinja");
    let fallback = if jinja.is_file() {
        let main = read(&jinja)?;
        let extra_dir = dir.join("additional_chat_templates");
        let mut extra = Vec::new();
        if extra_dir.is_dir() {
            for entry in std::fs::read_dir(&extra_dir).map_err(|e| Error::io(&extra_dir, e))? {
                let path = entry.map_err(|e| Error::io(&extra_dir, e))?.path();
                if path.extension().is_some_and(|e| e == "jinja") {
                    let name = path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    extra.push((name, read(&path)?));
                }
            }
            extra.sort();
        }
        if extra.is_empty() {
            Some(ChatTemplate::Single(main))
        } else {
            let mut all = vec![("default".to_string(), main)];
            all.extend(extra);
            Some(ChatTemplate::Named(all))
        }
    } else {
        match read_json_if_present(&dir.join("chat_template.json"))? {
            Some(v) => template_value(v.get("chat_template")),
            None => None,
        }
    };
    Ok(match config.get("chat_template") {
        Some(v) => template_value(Some(v)),
        None => fallback,
    })
}

/// A template given as a string or as a list of `{name, template}`.
fn template_value(v: Option<&Json>) -> Option<ChatTemplate> {
    match v? {
        Json::String(s) => Some(ChatTemplate::Single(s.clone())),
        Json::Array(list) => Some(ChatTemplate::Named(
            list.iter()
                .filter_map(|c| {
                    let name = c.get("name").and_then(Json::as_str).unwrap_or_default();
                    let template = c.get("template").and_then(Json::as_str)?;
                    Some((name.to_string(), template.to_string()))
                })
                .collect(),
        )),
        _ => None,
    }
}

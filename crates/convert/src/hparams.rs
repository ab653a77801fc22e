//! Reading JSON files of a checkpoint folder (`config.json`, tokenizer configs) with errors
//! that name the file and the key.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Reads and parses a JSON file.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a JSON file if it exists.
pub(crate) fn read_json_if_present(path: &Path) -> Result<Option<Value>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// A JSON object from a file, with typed accessors. `null` counts as absent, as the
/// converter's `hparams.get(key)` treats it.
#[derive(Clone, Debug)]
pub(crate) struct HParams {
    path: PathBuf,
    map: Map<String, Value>,
}

impl HParams {
    /// Reads `dir/config.json`.
    pub(crate) fn load(dir: &Path) -> Result<HParams> {
        let path = dir.join("config.json");
        if !path.is_file() {
            return Err(Error::invalid(
                &path,
                "not found: a transformers checkpoint folder needs its config.json",
            ));
        }
        HParams::from_value(&path, read_json(&path)?)
    }

    /// Wraps the parsed contents of `path`, which must be a JSON object.
    pub(crate) fn from_value(path: &Path, value: Value) -> Result<HParams> {
        match value {
            Value::Object(map) => Ok(HParams {
                path: path.to_path_buf(),
                map,
            }),
            _ => Err(Error::invalid(path, "expected a JSON object")),
        }
    }

    /// The keys of the nested `text_config` object laid over the top level, as the converter
    /// does for multimodal and assistant configs.
    pub(crate) fn with_text_config(&self) -> HParams {
        let mut map = self.map.clone();
        if let Some(Value::Object(text)) = self.map.get("text_config") {
            for (k, v) in text {
                map.insert(k.clone(), v.clone());
            }
        }
        HParams {
            path: self.path.clone(),
            map,
        }
    }

    /// An error about this file.
    pub(crate) fn error(&self, reason: impl Into<String>) -> Error {
        Error::invalid(&self.path, reason)
    }

    /// The value of `key`, `None` when absent or null.
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A nested object, `None` when absent or null.
    pub(crate) fn object(&self, key: &str) -> Result<Option<HParams>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(HParams {
                path: self.path.clone(),
                map: map.clone(),
            })),
            Some(_) => Err(self.error(format!("key '{key}' is not an object"))),
        }
    }

    /// A required non-negative integer.
    pub(crate) fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| self.error(format!("key '{key}' is missing")))
    }

    /// An optional non-negative integer; present but of another type is an error.
    pub(crate) fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.error(format!(
                        "key '{key}' is {v}, expected a non-negative integer"
                    ))
                }),
        }
    }

    /// A required number.
    pub(crate) fn f64(&self, key: &str) -> Result<f64> {
        self.opt_f64(key)?
            .ok_or_else(|| self.error(format!("key '{key}' is missing")))
    }

    /// An optional number.
    pub(crate) fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.error(format!("key '{key}' is {v}, expected a number"))),
        }
    }

    /// An optional boolean.
    pub(crate) fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.error(format!("key '{key}' is {v}, expected true or false"))),
        }
    }

    /// An optional string.
    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.error(format!("key '{key}' is {v}, expected a string"))),
        }
    }

    /// A required array of strings.
    pub(crate) fn strings(&self, key: &str) -> Result<Vec<&str>> {
        let bad = || self.error(format!("key '{key}' is not an array of strings"));
        match self.get(key) {
            None => Err(self.error(format!("key '{key}' is missing"))),
            Some(Value::Array(items)) => items.iter().map(|v| v.as_str().ok_or_else(bad)).collect(),
            Some(_) => Err(bad()),
        }
    }

    /// An optional array of non-negative integers.
    pub(crate) fn opt_usizes(&self, key: &str) -> Result<Option<Vec<usize>>> {
        let bad = || {
            self.error(format!(
                "key '{key}' is not an array of non-negative integers"
            ))
        };
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(bad)
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(_) => Err(bad()),
        }
    }
}

//! An ordered list of GGUF metadata entries with gguf-py's overwrite rule: setting a key that
//! exists replaces its value (and type) where it stands, so the file's key order is the order
//! in which keys were first set.

use gguf::{Array, Value};

/// Ordered metadata entries.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Kv {
    entries: Vec<(String, Value)>,
}

impl Kv {
    /// An empty list.
    pub(crate) fn new() -> Kv {
        Kv::default()
    }

    /// Sets `key`, in place when it exists, else at the end.
    pub(crate) fn set(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// Sets a u32 entry.
    pub(crate) fn set_u32(&mut self, key: impl Into<String>, value: usize) {
        // Sizes in configs are far below 2^32; saturate rather than wrap if one is not.
        self.set(key, Value::U32(u32::try_from(value).unwrap_or(u32::MAX)));
    }

    /// Sets an f32 entry from a config number.
    pub(crate) fn set_f32(&mut self, key: impl Into<String>, value: f64) {
        self.set(key, Value::F32(value as f32));
    }

    /// Sets an INT32 array entry (gguf-py's type for lists of Python ints). An empty list is
    /// not written, as gguf-py skips it.
    pub(crate) fn set_i32s(&mut self, key: impl Into<String>, values: &[usize]) {
        if values.is_empty() {
            return;
        }
        let values = values
            .iter()
            .map(|&v| i32::try_from(v).unwrap_or(i32::MAX))
            .collect();
        self.set(key, Value::Array(Array::I32(values)));
    }

    /// Sets a string entry.
    pub(crate) fn set_str(&mut self, key: impl Into<String>, value: &str) {
        self.set(key, Value::String(value.to_string()));
    }

    /// Appends every entry of `other` with [`Kv::set`].
    pub(crate) fn extend(&mut self, other: Kv) {
        for (k, v) in other.entries {
            self.set(k, v);
        }
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entries, in order.
    pub(crate) fn into_entries(self) -> Vec<(String, Value)> {
        self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_an_existing_key_keeps_its_place_and_takes_the_new_type() {
        let mut kv = Kv::new();
        kv.set_u32("a", 1);
        kv.set_u32("b", 2);
        kv.set_i32s("a", &[3, 4]);
        let entries = kv.into_entries();
        assert_eq!(entries[0].0, "a");
        assert_eq!(entries[0].1, Value::Array(Array::I32(vec![3, 4])));
        assert_eq!(entries[1], ("b".to_string(), Value::U32(2)));
    }
}

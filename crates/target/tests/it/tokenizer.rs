//! The tokenizer built from GGUF metadata reproduces the reference tokenizer's text→ids pairs
//! exactly, decodes them back, and renders the chat template.

use target::{ChatMessage, Tokenizer};

use crate::testing::fixture;

fn tokenizer() -> Tokenizer {
    Tokenizer::from_gguf(&gguf::GgufFile::open(fixture("dense.gguf")).unwrap()).unwrap()
}

#[test]
fn fixture_pairs_round_trip() {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("manifest.json")).unwrap()).unwrap();
    let tok = tokenizer();
    let tests = manifest["tokenizer"]["tests"].as_array().unwrap();
    assert!(tests.len() >= 6);
    for case in tests {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text, true).unwrap(), ids, "encode {text:?}");
        assert_eq!(tok.decode(&ids[1..]), text, "decode {text:?}");
    }
}

#[test]
fn chat_template_renders_like_the_reference() {
    let tok = tokenizer();
    let msgs = [ChatMessage {
        role: "user".into(),
        content: "hi".into(),
    }];
    let text = tok.apply_chat_template(&msgs, true).unwrap();
    assert_eq!(text, "<bos><|turn>user\nhi<turn|>\n<|turn>model\n");
    let ids = tok.encode(&text, false).unwrap();
    assert_eq!(ids[..2], [2, 5], "<bos> and <|turn> are special tokens");
    assert!(tok.is_end_of_generation(1) && tok.is_end_of_generation(6));
}

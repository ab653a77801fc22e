//! End-to-end tests of the `specula` binary.

use std::path::PathBuf;
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

fn specula(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_specula"))
        .args(args)
        .output()
        .expect("run specula")
}

/// Fails with the run's stderr unless it succeeded.
fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn inspect_json_describes_the_file() {
    let path = fixture("dense.q8_0.gguf");
    let out = specula(&["inspect", "--json", path.to_str().unwrap()]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(v["version"], 3);
    assert_eq!(v["alignment"], 32);
    assert_eq!(v["architecture"], "gemma4");
    assert_eq!(v["metadata"]["gemma4.block_count"], 6);
    assert_eq!(
        v["metadata"]["gemma4.attention.head_count_kv"],
        serde_json::json!([2, 2, 2, 2, 2, 1])
    );
    assert_eq!(
        v["metadata"]["tokenizer.ggml.tokens"],
        serde_json::json!({"array_of": "string", "len": 1024})
    );
    assert_eq!(v["tensor_count"], 86);
    let tensors = v["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 86);
    let embd = tensors
        .iter()
        .find(|t| t["name"] == "token_embd.weight")
        .unwrap();
    assert_eq!(embd["type"], "Q8_0");
    assert_eq!(embd["shape"], serde_json::json!([256, 1024]));
    assert_eq!(embd["bytes"], 256 * 1024 / 32 * 34);
    assert!(embd["offset"].as_u64().unwrap() % 32 == 0);
}

#[test]
fn inspect_text_lists_types_and_tensors() {
    let path = fixture("moe.gguf");
    let out = specula(&["inspect", "--tensors", path.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("architecture:  gemma4"), "{text}");
    assert!(text.contains("gemma4.expert_count"), "{text}");
    assert!(text.contains("F16"), "{text}");
    assert!(text.contains("blk.0.ffn_gate_up_exps.weight"), "{text}");
    assert!(text.contains("tensors: 134"), "{text}");
}

#[test]
fn unreadable_file_is_one_clear_line_and_nonzero_exit() {
    let bad = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../gguf/tests/data/bad/misaligned_offset.gguf");
    let out = specula(&["inspect", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("misaligned_offset.gguf: tensor 'w': data offset 4 is not a multiple of the alignment 32"), "{err}");

    let out = specula(&["inspect", "/nonexistent.gguf"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.gguf"));
}

fn reference_i32(name: &str) -> Vec<i64> {
    let bytes = std::fs::read(fixture("dense.ref.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(name)
        .unwrap()
        .data()
        .as_chunks::<4>()
        .0
        .iter()
        .map(|c| i32::from_le_bytes(*c) as i64)
        .collect()
}

fn reference_f32(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixture("dense.ref.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(name)
        .unwrap()
        .data()
        .as_chunks::<4>()
        .0
        .iter()
        .map(|c| f32::from_le_bytes(*c))
        .collect()
}

fn join(ids: &[i64]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn generate_json_greedy_matches_the_reference_continuation() {
    let model = fixture("dense.gguf");
    let prompt = join(&reference_i32("input_ids"));
    let out = specula(&[
        "generate",
        "-m",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--tokens",
        &prompt,
        "-n",
        "32",
        "--ignore-eos",
        "--json",
    ]);
    assert_ok(&out);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    let tokens: Vec<i64> = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap())
        .collect();
    assert_eq!(tokens, reference_i32("greedy_tokens"));
    assert_eq!(v["stats"]["prompt_tokens"], 36);
    assert_eq!(v["stats"]["generated_tokens"], 32);
    assert!(v["stats"]["decode_tok_s"].as_f64().unwrap() > 0.0);
    assert!(v["text"].is_string());
}

/// Runs `specula logits` on the dense fixture's reference prompt with `extra` arguments; returns
/// the relative L2 error of the logits against the transformers reference.
fn logits_error(tag: &str, extra: &[&str]) -> f64 {
    let model = fixture("dense.gguf");
    let dir = std::env::temp_dir().join(format!("specula-logits-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("out.safetensors");
    let ids = join(&reference_i32("input_ids"));
    let mut args = vec!["logits", "-m", model.to_str().unwrap(), "--tokens", &ids];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--out", path.to_str().unwrap()]);
    let out = specula(&args);
    assert_ok(&out);
    assert!(out.stdout.is_empty(), "logits prints nothing on stdout");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let logits = st.tensor("logits").unwrap();
    assert_eq!(logits.shape(), [36, 1024]);
    assert_eq!(st.tensor("hidden").unwrap().shape(), [36, 256]);
    let got: Vec<f32> = logits
        .data()
        .as_chunks::<4>()
        .0
        .iter()
        .map(|c| f32::from_le_bytes(*c))
        .collect();
    let want = reference_f32("logits");
    let num: f64 = got
        .iter()
        .zip(&want)
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum();
    let den: f64 = want.iter().map(|b| f64::from(*b).powi(2)).sum();
    std::fs::remove_dir_all(&dir).ok();
    (num / den).sqrt()
}

#[test]
fn logits_file_matches_the_reference() {
    // --batch 16 forces three chunks; an f32 cache whatever the device (CUDA defaults to f16).
    let err = logits_error("f32", &["--batch", "16", "--kv-type", "f32"]);
    assert!(err < 1e-4, "logits rel err {err:e}");
}

#[test]
fn an_f16_kv_cache_stays_near_the_reference() {
    // Keys and values rounded to f16 (2^-11 relative) on the CPU backend: the logits move by
    // about that much, not more.
    let err = logits_error(
        "f16",
        &["--device", "cpu", "--kv-type", "f16", "--batch", "16"],
    );
    eprintln!("f16 KV cache: logits rel err {err:.2e}");
    assert!(err < 5e-3, "logits rel err {err:e}");
}

#[test]
fn bad_generate_inputs_are_one_line_errors() {
    use std::os::unix::ffi::OsStrExt;
    let model = fixture("dense.gguf");
    let m = model.to_str().unwrap();
    let bad_utf8 = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let out = Command::new(env!("CARGO_BIN_EXE_specula"))
        .args(["generate", "-m", m, "-n", "2"])
        .arg("--prompt")
        .arg(bad_utf8)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--prompt is not valid UTF-8"), "{err}");
    for (args, expected) in [
        (
            vec!["--tokens", "2,5000"],
            "token id 5000 is outside the vocabulary of 1024 tokens",
        ),
        (
            vec!["--tokens", "2,3", "--ctx", "4", "-n", "8"],
            "context of 5 tokens exceeds the maximum of 4 positions",
        ),
        (
            vec!["--tokens", "2", "--top-p", "0"],
            "top-p 0 must be in (0, 1]",
        ),
    ] {
        let mut all = vec!["generate", "-m", m, "--device", "cpu"];
        all.extend(args);
        let out = specula(&all);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(expected), "{err}");
    }
}

#[test]
fn speculative_generate_reports_rounds_and_matches_plain_greedy() {
    let model = fixture("dense.gguf");
    let prompt = join(&reference_i32("input_ids"));
    for (drafter, extra) in [
        ("mtp", Some(fixture("assistant_tuned.gguf"))),
        ("ngram", None),
        ("dflash", Some(fixture("dflash_tuned.gguf"))),
        ("dflash", Some(fixture("hf/dflash"))),
    ] {
        let mut args = vec![
            "generate",
            "-m",
            model.to_str().unwrap(),
            "--tokens",
            &prompt,
            "-n",
            "32",
            "--ignore-eos",
            "--json",
            "--drafter",
            drafter,
            "--gamma",
            "4",
            // The reference tokens come from an f32 model; CUDA would default to an f16 cache.
            "--kv-type",
            "f32",
        ];
        let path;
        if let Some(p) = extra {
            path = p;
            args.extend(["--drafter-model", path.to_str().unwrap()]);
        }
        let out = specula(&args);
        assert!(
            out.status.success(),
            "{drafter}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let tokens: Vec<i64> = v["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_i64().unwrap())
            .collect();
        assert_eq!(tokens, reference_i32("greedy_tokens"), "{drafter}");
        let stats = &v["stats"];
        for key in [
            "rounds",
            "drafted",
            "accepted",
            "acceptance_length",
            "per_position_acceptance",
            "decode_tok_s",
        ] {
            assert!(!stats[key].is_null(), "{drafter}: stats.{key} missing");
        }
        let rounds = v["rounds"].as_array().unwrap();
        assert_eq!(rounds.len() as u64, stats["rounds"].as_u64().unwrap());
        assert!(rounds
            .iter()
            .all(|r| r["accepted"].as_u64().unwrap()
                <= r["drafted"].as_array().unwrap().len() as u64));
    }
}

#[test]
fn bad_drafter_inputs_are_one_line_errors() {
    let model = fixture("dense.gguf");
    let m = model.to_str().unwrap();
    let not_assistant = fixture("dflash.gguf");
    let assistant = fixture("assistant.gguf");
    for (args, expected) in [
        (
            vec!["--drafter", "mtp"],
            "--drafter mtp needs --drafter-model",
        ),
        (
            vec![
                "--drafter",
                "mtp",
                "--drafter-model",
                not_assistant.to_str().unwrap(),
            ],
            "not a Gemma 4 MTP assistant",
        ),
        (
            vec!["--drafter", "dflash"],
            "--drafter dflash needs --drafter-model",
        ),
        (
            vec![
                "--drafter",
                "dflash",
                "--drafter-model",
                assistant.to_str().unwrap(),
            ],
            "not a DFlash drafter",
        ),
        (
            vec![
                "--drafter",
                "dflash",
                "--drafter-model",
                not_assistant.to_str().unwrap(),
                "--block",
                "9",
            ],
            "block size 9 must be in 2..=8",
        ),
        (
            vec![
                "--drafter",
                "mtp",
                "--drafter-model",
                assistant.to_str().unwrap(),
                "--block",
                "4",
            ],
            "apply to --drafter dflash only",
        ),
        (
            vec!["--drafter", "ngram", "--gamma", "0"],
            "gamma 0 is outside 1..=16",
        ),
        (
            vec!["--drafter", "ngram", "--gamma", "80"],
            "gamma 80 is outside 1..=16",
        ),
    ] {
        let mut all = vec![
            "generate", "-m", m, "--device", "cpu", "--tokens", "2,3", "-n", "4",
        ];
        all.extend(args);
        let out = specula(&all);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(expected), "{err}");
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn convert_reproduces_the_converters_files() {
    // The repo keeps the DFlash folder's weights (the target folder's JSON files give the
    // tokenizer); the convert crate's tests cover the target and assistant folders.
    let dir = scratch("convert_reproduces");
    let drafter = dir.join("dflash.gguf");
    let out = specula(&[
        "convert",
        fixture("hf/dflash").to_str().unwrap(),
        "--target-dir",
        fixture("hf/dense").to_str().unwrap(),
        "--out",
        drafter.to_str().unwrap(),
    ]);
    assert_ok(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("dflash, 25 tensors"), "{text}");
    assert!(std::fs::read(&drafter).unwrap() == std::fs::read(fixture("dflash.gguf")).unwrap());

    let quantized = dir.join("dflash.q8_0.gguf");
    let out = specula(&[
        "convert",
        fixture("hf/dflash").to_str().unwrap(),
        "--target-dir",
        fixture("hf/dense").to_str().unwrap(),
        "--type",
        "q8_0",
        "-o",
        quantized.to_str().unwrap(),
    ]);
    assert_ok(&out);
    let file = gguf::GgufFile::open(&quantized).unwrap();
    assert_eq!(file.architecture().unwrap(), "dflash");
    assert_eq!(file.get_as::<u32>("general.file_type").unwrap(), 7);
    let fc = file.require_tensor("fc.weight").unwrap();
    assert_eq!(fc.ggml_type(), gguf::GgmlType::Q8_0);
}

#[test]
fn convert_bad_input_is_one_line_and_writes_nothing() {
    let dir = scratch("convert_bad_input");
    let target = dir.join("out.gguf");
    // A DFlash drafter without its target's folder.
    let out = specula(&[
        "convert",
        fixture("hf/dflash").to_str().unwrap(),
        "--out",
        target.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("specula: error: ") && err.contains("--target-dir"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    // An unknown type.
    let out = specula(&[
        "convert",
        fixture("hf/dflash").to_str().unwrap(),
        "--target-dir",
        fixture("hf/dense").to_str().unwrap(),
        "--out",
        target.to_str().unwrap(),
        "--type",
        "q3_k",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown type 'q3_k'"));
}

/// Runs `specula args` with `SPECULA_ASSETS` set to `dir` (the bundled-model folder).
fn with_assets(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_specula"))
        .env("SPECULA_ASSETS", dir)
        .args(args)
        .output()
        .expect("run specula")
}

/// With no `--model`, `generate` (and `specula` with no command, the main job) uses the bundled
/// trio and drafts with its MTP assistant; here `SPECULA_ASSETS` points at a folder holding the
/// fixture trio under the bundled names. A missing bundled file is one clear line.
#[test]
fn no_model_means_the_bundled_trio_with_mtp() {
    let dir = std::env::temp_dir().join(format!("specula-assets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = with_assets(&dir, &["generate", "--tokens", "2,5", "-n", "4"]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("specula-py-target.q4_k_m.gguf") && err.lines().count() == 1,
        "{err}"
    );
    for (src, name) in [
        ("dense.gguf", "specula-py-target.q4_k_m.gguf"),
        ("assistant_tuned.gguf", "specula-py-assistant.q8_0.gguf"),
        ("dflash_tuned.gguf", "specula-py-dflash.q8_0.gguf"),
    ] {
        std::fs::copy(fixture(src), dir.join(name)).unwrap();
    }
    let out = with_assets(
        &dir,
        &[
            "generate", "--tokens", "2,5,9", "-n", "12", "--json", "--device", "cpu",
        ],
    );
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["stats"]["acceptance_length"].as_f64().unwrap() >= 1.0);
    assert_eq!(
        v["stats"]["per_position_acceptance"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let main_job = with_assets(&dir, &[]);
    assert!(
        main_job.status.success(),
        "{}",
        String::from_utf8_lossy(&main_job.stderr)
    );
    let text = String::from_utf8_lossy(&main_job.stdout);
    assert!(text.contains("tokens per verify"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The bundled trio itself (`assets/`): the main job prints Python and its statistics, and the
/// MTP and DFlash runs give exactly the plain greedy tokens, with real acceptance (the trained
/// assistant is accepted for well over one token per verify on this prompt).
#[test]
fn the_bundled_trio_runs_losslessly() {
    let assets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets");
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "generate",
            "--prompt",
            "def read_config(path):\n    with open(path) as f:",
            "-n",
            "48",
            "--json",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        let out = with_assets(&assets, &args);
        assert_ok(&out);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let plain = run(&["--drafter", "none"]);
    let mtp = run(&[]);
    let dflash = run(&["--drafter", "dflash"]);
    assert_eq!(mtp["tokens"], plain["tokens"]);
    assert_eq!(dflash["tokens"], plain["tokens"]);
    let mtp_len = mtp["stats"]["acceptance_length"].as_f64().unwrap();
    assert!(mtp_len > 1.5, "MTP acceptance length {mtp_len}");
    assert!(plain["text"].as_str().unwrap().contains('\n'));

    let main_job = with_assets(&assets, &["--verbose"]);
    assert!(main_job.status.success());
    let text = String::from_utf8_lossy(&main_job.stdout);
    assert!(text.starts_with("class Queue:"), "{text}");
    assert!(
        text.contains("drafter Mtp:") && text.contains("tokens per verify"),
        "{text}"
    );
}

//! The DFlash drafter against the transformers references: context features and the first
//! block (logits, final hidden, drafts) within 1e-4, every speculative round of `dflash` and
//! `dflash_tuned` (drafts and accepted counts), output identical to plain greedy, the z-lab
//! safetensors folder loading to the same drafter, and clear errors on bad input.

mod common;

use common::{fixture, rel_err, Ref};
use drafter_dflash::{DflashDrafter, Source};
use target::{generate, generate_speculative, LogitRows, Sampler, SamplingParams, Target};

fn target(max_batch: usize) -> Target {
    common::target(128, max_batch)
}

/// Prefills the prompt with the drafter's captures, feeds the context to the drafter, checks
/// the features against `context_features`, then runs the reference's first block.
fn first_block(
    drafter_path: &str,
    reference: &str,
    max_batch: usize,
) -> (Vec<u32>, Vec<f32>, Vec<f32>) {
    let r = Ref::open(reference);
    let prompt = r.u32("prompt_ids");
    let mut t = target(max_batch);
    let mut d = DflashDrafter::open(&fixture(drafter_path), &mut t, None).unwrap();
    let layers = d.config().target_layers.clone();
    let h = d.config().n_embd;
    let mut features = vec![0.0f32; prompt.len() * h * layers.len()];
    let mut row0 = 0;
    for part in prompt.chunks(max_batch) {
        let out = t.forward(part, LogitRows::None, &layers, false).unwrap();
        for (i, l) in layers.iter().enumerate() {
            let data = &out.layers.iter().find(|(id, _)| id == l).unwrap().1;
            for r in 0..part.len() {
                let at = (row0 + r) * h * layers.len() + i * h;
                features[at..at + h].copy_from_slice(&data[r * h..(r + 1) * h]);
            }
        }
        d.append_context(&mut t, &out, part.len()).unwrap();
        row0 += part.len();
    }
    let e = rel_err(&features, &r.f32("context_features"));
    assert!(e < 1e-4, "{reference}: context features rel err {e:.2e}");
    let ids = r.u32("block_input_ids");
    let positions = r.u32("block_positions");
    assert_eq!(
        positions[0] as usize,
        d.context_len(),
        "the block starts after the context"
    );
    assert!(ids[1..].iter().all(|&x| x == d.config().mask_token));
    let drafts = d.run_block(&mut t, ids[0], ids.len()).unwrap();
    let (logits, hidden) = d.last_block();
    (drafts, logits.to_vec(), hidden.to_vec())
}

fn check_first_block(drafter_path: &str, reference: &str) {
    let r = Ref::open(reference);
    for max_batch in [8, 64] {
        let (drafts, logits, hidden) = first_block(drafter_path, reference, max_batch);
        let eh = rel_err(&hidden, &r.f32("block_hidden"));
        let el = rel_err(&logits, &r.f32("block_logits"));
        eprintln!(
            "{drafter_path} (chunks of {max_batch}): hidden rel err {eh:.2e}, logits {el:.2e}"
        );
        assert!(eh < 1e-4, "{drafter_path}: block hidden rel err {eh:.2e}");
        assert!(el < 1e-4, "{drafter_path}: block logits rel err {el:.2e}");
        assert_eq!(
            drafts,
            r.u32("block_draft_tokens"),
            "{drafter_path}: drafts"
        );
    }
}

#[test]
fn first_block_matches_the_reference() {
    check_first_block("dflash.gguf", "dflash.ref.safetensors");
}

#[test]
fn first_block_matches_the_reference_tuned() {
    check_first_block("dflash_tuned.gguf", "dflash_tuned.ref.safetensors");
}

fn check_rounds(drafter_path: &str, reference: &str) {
    let r = Ref::open(reference);
    let prompt = r.u32("prompt_ids");
    let expected = r.u32("spec_output");
    let drafts = r.u32("spec_drafts");
    let accepted = r.u32("spec_num_accepted");
    let mut t = target(16);
    let mut d = DflashDrafter::open(&fixture(drafter_path), &mut t, None).unwrap();
    let mut s = Sampler::new(SamplingParams::default());
    let out = generate_speculative(
        &mut t,
        &mut d,
        &prompt,
        &mut s,
        expected.len(),
        7,
        &|_| false,
        &mut |_| Ok(()),
    )
    .unwrap();
    assert_eq!(out.tokens, expected, "{drafter_path}: output");
    assert_eq!(
        out.rounds.len(),
        accepted.len(),
        "{drafter_path}: number of rounds"
    );
    let mut emitted = 1;
    for (i, round) in out.rounds.iter().enumerate() {
        assert_eq!(
            round.accepted, accepted[i] as usize,
            "{drafter_path}: round {i} accepted"
        );
        // transformers always drafts 7; near the end we keep only what can still be emitted
        // (from the same full block, so the kept drafts are the reference's first ones).
        let keep = 7.min(expected.len() - emitted - 1);
        assert_eq!(
            round.drafted,
            drafts[i * 7..i * 7 + keep].to_vec(),
            "{drafter_path}: round {i} drafts"
        );
        emitted += round.accepted + 1;
    }
    let mut plain = target(16);
    let g = generate(
        &mut plain,
        &prompt,
        &mut Sampler::new(SamplingParams::default()),
        expected.len(),
        &|_| false,
        &mut |_| Ok(()),
    )
    .unwrap();
    assert_eq!(
        out.tokens, g.tokens,
        "{drafter_path}: speculative output differs from plain greedy"
    );
    eprintln!(
        "{drafter_path}: acceptance length {:.2}, per position {:?}",
        out.acceptance_length(),
        out.per_position_acceptance()
    );
}

#[test]
fn every_round_matches_on_dflash() {
    check_rounds("dflash.gguf", "dflash.ref.safetensors");
}

#[test]
fn every_round_matches_on_dflash_tuned() {
    check_rounds("dflash_tuned.gguf", "dflash_tuned.ref.safetensors");
}

#[test]
fn safetensors_folder_gives_the_same_drafter() {
    let r = Ref::open("dflash.ref.safetensors");
    let prompt = r.u32("prompt_ids");
    let mut t = target(64);
    let from_gguf = Source::open(&fixture("dflash.gguf")).unwrap();
    let from_dir = Source::open(&fixture("hf/dflash")).unwrap();
    assert_eq!(from_gguf.declared, from_dir.declared, "hyper-parameters");
    let mut names: Vec<_> = from_gguf.tensors.keys().collect();
    names.sort();
    let mut dir_names: Vec<_> = from_dir.tensors.keys().collect();
    dir_names.sort();
    assert_eq!(names, dir_names, "tensor names");
    for (n, a) in &from_gguf.tensors {
        let b = &from_dir.tensors[n];
        assert_eq!(a.shape, b.shape, "{n}: shape");
        assert_eq!(a.bytes.as_slice(), b.bytes.as_slice(), "{n}: data");
    }
    let mut d = DflashDrafter::load(from_dir, &mut t, None).unwrap();
    let layers = d.config().target_layers.clone();
    let out = t.forward(&prompt, LogitRows::None, &layers, false).unwrap();
    d.append_context(&mut t, &out, prompt.len()).unwrap();
    let ids = r.u32("block_input_ids");
    let drafts = d.run_block(&mut t, ids[0], ids.len()).unwrap();
    assert_eq!(drafts, r.u32("block_draft_tokens"));
    let e = rel_err(d.last_block().0, &r.f32("block_logits"));
    assert!(e < 1e-4, "logits rel err {e:.2e}");
}

#[test]
fn bad_drafter_inputs() {
    let mut t = target(8);
    let msg = |path: &str, t: &mut Target| {
        DflashDrafter::open(&fixture(path), t, None)
            .err()
            .unwrap()
            .to_string()
    };
    let e = msg("dense.gguf", &mut t);
    assert!(
        e.contains("architecture is 'gemma4'") && e.contains("dense.gguf"),
        "{e}"
    );
    let e = msg("assistant.gguf", &mut t);
    assert!(e.contains("not a DFlash drafter"), "{e}");
    let e = msg("no-such-drafter.gguf", &mut t);
    assert!(e.contains("no-such-drafter.gguf"), "{e}");
    // A block larger than trained.
    let e = DflashDrafter::open(&fixture("dflash.gguf"), &mut t, Some(9))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("block size 9"), "{e}");
    let e = DflashDrafter::open(&fixture("dflash.gguf"), &mut t, Some(1))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("block size 1"), "{e}");
    // A target layer the target does not have.
    let mut src = Source::open(&fixture("dflash.gguf")).unwrap();
    src.declared.target_layers[2] = 40;
    let e = DflashDrafter::load(src, &mut t, None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("target layer id 40 is out of range"), "{e}");
    // A drafter for a target of another width.
    let mut src = Source::open(&fixture("dflash.gguf")).unwrap();
    src.tensors.get_mut("fc.weight").unwrap().shape = vec![384, 512];
    let e = DflashDrafter::load(src, &mut t, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("drafter width 512 differs from the target's 256"),
        "{e}"
    );
    // A drafter for a target with another vocabulary.
    let mut src = Source::open(&fixture("dflash.gguf")).unwrap();
    src.declared.n_vocab = Some(262144);
    let e = DflashDrafter::load(src, &mut t, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("vocabulary of 262144 tokens differs from the target's 1024"),
        "{e}"
    );
    // A missing tensor is named.
    let mut src = Source::open(&fixture("dflash.gguf")).unwrap();
    src.tensors.remove("blk.1.ffn_down.weight");
    let e = DflashDrafter::load(src, &mut t, None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("'blk.1.ffn_down.weight' is missing"), "{e}");
    // A folder without a DFlash config.
    let e = Source::open(&fixture("hf")).err().unwrap();
    assert!(e.contains("config.json"), "{e}");
}

//! The assistant against the transformers references: one chained round of steps (logits and
//! next hidden within 1e-4), the exact-KV speculative rounds on `assistant` and
//! `assistant_tuned`, and output identical to plain greedy.

use std::path::PathBuf;
use std::sync::Arc;

use drafter_mtp::MtpDrafter;
use safetensors::SafeTensors;
use target::{
    generate, generate_speculative, LogitRows, Sampler, SamplingParams, Target, TargetOptions,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

struct Ref(Vec<u8>);

impl Ref {
    fn open(name: &str) -> Ref {
        Ref(std::fs::read(fixture(name)).unwrap())
    }
    fn f32(&self, name: &str) -> Vec<f32> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        st.tensor(name)
            .unwrap()
            .data()
            .as_chunks::<4>()
            .0
            .iter()
            .map(|c| f32::from_le_bytes(*c))
            .collect()
    }
    fn i32(&self, name: &str) -> Vec<i32> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        st.tensor(name)
            .unwrap()
            .data()
            .as_chunks::<4>()
            .0
            .iter()
            .map(|c| i32::from_le_bytes(*c))
            .collect()
    }
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let (mut n, mut d) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        n += (f64::from(x) - f64::from(y)).powi(2);
        d += f64::from(y).powi(2);
    }
    (n / d).sqrt()
}

fn target(max_batch: usize) -> Target {
    let file = Arc::new(gguf::GgufFile::open(fixture("dense.gguf")).unwrap());
    let options = TargetOptions {
        n_ctx: 128,
        max_batch,
        ..Default::default()
    };
    Target::load(
        file,
        Box::new(graph::CpuBackend::new()),
        &options,
        &mut |_, _| {},
    )
    .unwrap()
}

fn drafter(name: &str, t: &mut Target) -> MtpDrafter {
    MtpDrafter::load(Arc::new(gguf::GgufFile::open(fixture(name)).unwrap()), t).unwrap()
}

/// Overwrites the donor caches with the reference's own K/V (`[kv_heads, T, head_dim]`), so the
/// step is checked on exactly the reference's inputs.
fn load_reference_kv(t: &mut Target, r: &Ref) {
    for (donor, kind, hd, nkv) in [
        (4usize, "sliding_attention", 32usize, 2usize),
        (5, "full_attention", 64, 1),
    ] {
        let kv = t.cache().layer(donor).unwrap();
        for (buf, which) in [(kv.k, "k"), (kv.v, "v")] {
            let want = r.f32(&format!("target_shared_{which}_{kind}"));
            let n_pos = want.len() / (hd * nkv);
            let mut rows = vec![0.0f32; n_pos * hd * nkv];
            for h in 0..nkv {
                for p in 0..n_pos {
                    for i in 0..hd {
                        rows[p * hd * nkv + h * hd + i] = want[(h * n_pos + p) * hd + i];
                    }
                }
            }
            t.backend_mut()
                .write(buf, 0, graph::HostData::F32(&rows))
                .unwrap();
        }
    }
}

#[test]
fn one_round_of_steps_matches_the_reference() {
    let r = Ref::open("assistant.ref.safetensors");
    let prompt: Vec<u32> = r.i32("prompt_ids").iter().map(|&x| x as u32).collect();
    let mut t = target(64);
    let out = t.forward(&prompt, LogitRows::Last, &[], false).unwrap();
    let h = 256;
    let h_in = r.f32("step_in_h_prev");
    let last_hidden = &out.hidden[out.hidden.len() - h..];
    assert!(
        rel_err(last_hidden, &h_in[..h]) < 1e-4,
        "target hidden of the last prompt token"
    );
    let mut d = drafter("assistant.gguf", &mut t);
    assert_eq!(
        d.donors(),
        [4, 4, 4, 5],
        "donors: last sliding (4) and last full (5) target layers"
    );
    let tokens = r.i32("step_in_token");
    let pos = r.i32("step_position")[0] as usize;
    let (logits, h_next, argmax) = (
        r.f32("step_logits"),
        r.f32("step_h_next"),
        r.i32("step_argmax"),
    );
    // On our own K/V (equal to the reference's within 6e-6) the argmax chain matches; one step of
    // this random model amplifies input differences 25x (its logits move 1.3e-4 for a 5e-6
    // change of h_prev), so the 1e-4 comparison runs on the reference's own K/V below.
    let mut h_prev = h_in[..h].to_vec();
    let mut tok = tokens[0] as u32;
    for (s, &want) in argmax.iter().enumerate() {
        let (_, hn, am) = d.step(&mut t, tok, &h_prev, pos).unwrap();
        assert_eq!(am, want as u32, "chained step {s}: argmax on our own K/V");
        tok = am;
        h_prev = hn;
    }
    load_reference_kv(&mut t, &r);
    for s in 0..4 {
        let (lg, hn, am) = d
            .step(&mut t, tokens[s] as u32, &h_in[s * h..(s + 1) * h], pos)
            .unwrap();
        let e1 = rel_err(&lg, &logits[s * 1024..(s + 1) * 1024]);
        let e2 = rel_err(&hn, &h_next[s * h..(s + 1) * h]);
        eprintln!("step {s}: logits {e1:.2e} h_next {e2:.2e}");
        assert!(e1 <= 1e-4, "step {s}: logits rel err {e1:e}");
        assert!(e2 <= 1e-4, "step {s}: h_next rel err {e2:e}");
        assert_eq!(am, argmax[s] as u32, "step {s}: argmax");
    }
}

fn check_clean_rounds(assistant: &str, reference: &str) {
    let r = Ref::open(reference);
    let prompt: Vec<u32> = r.i32("prompt_ids").iter().map(|&x| x as u32).collect();
    let expected_out: Vec<u32> = r.i32("spec_output").iter().map(|&x| x as u32).collect();
    let drafts = r.i32("clean_spec_drafts");
    let accepted = r.i32("clean_spec_num_accepted");
    let margins = r.f32("clean_spec_draft_margin");
    let mut t = target(8);
    let mut d = drafter(assistant, &mut t);
    let mut s = Sampler::new(SamplingParams::default());
    let out = generate_speculative(
        &mut t,
        &mut d,
        &prompt,
        &mut s,
        expected_out.len(),
        4,
        &|_| false,
        &mut |_| Ok(()),
    )
    .unwrap();
    assert_eq!(out.tokens, expected_out, "{assistant}: output");
    let n_ref = accepted.len();
    assert_eq!(out.rounds.len(), n_ref, "{assistant}: number of rounds");
    for (i, round) in out.rounds.iter().enumerate() {
        assert_eq!(
            round.accepted, accepted[i] as usize,
            "{assistant}: round {i} accepted"
        );
        for (j, &tok) in round.drafted.iter().enumerate() {
            let want = drafts[i * 4 + j];
            if want < 0 {
                break;
            }
            assert_eq!(tok, want as u32, "{assistant}: round {i} draft {j}");
            // Later drafts of the round follow from this one; stop at a near-tie.
            if margins[i * 4 + j] < 1e-3 {
                break;
            }
        }
    }
    // And the output equals plain greedy decoding.
    let mut plain = target(8);
    let g = generate(
        &mut plain,
        &prompt,
        &mut Sampler::new(SamplingParams::default()),
        expected_out.len(),
        &|_| false,
        &mut |_| Ok(()),
    )
    .unwrap();
    assert_eq!(out.tokens, g.tokens);
    eprintln!(
        "{assistant}: acceptance length {:.2}, per position {:?}",
        out.acceptance_length(),
        out.per_position_acceptance()
    );
}

#[test]
fn exact_kv_rounds_match_on_assistant() {
    check_clean_rounds("assistant.gguf", "assistant.ref.safetensors");
}

#[test]
fn exact_kv_rounds_match_on_assistant_tuned() {
    check_clean_rounds("assistant_tuned.gguf", "assistant_tuned.ref.safetensors");
}

#[test]
fn bad_drafter_inputs() {
    let mut t = target(8);
    // A target file is not an assistant.
    let err = MtpDrafter::load(
        Arc::new(gguf::GgufFile::open(fixture("dense.gguf")).unwrap()),
        &mut t,
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("not a Gemma 4 MTP assistant"),
        "{err}"
    );
    // An assistant for another target: assistant_e belongs to the e model (width 256 too),
    // so check against the MoE target whose width differs? All fixtures share 256; check the
    // DFlash file instead, which is not an assistant.
    let err = MtpDrafter::load(
        Arc::new(gguf::GgufFile::open(fixture("dflash.gguf")).unwrap()),
        &mut t,
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("architecture is 'dflash'"),
        "{err}"
    );
}

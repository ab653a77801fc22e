//! `cargo xtask bench`: real-size speed on the GPU, in one run.
//!
//! Built here, run on the GPU machine from the carried binary (`gpu-bundle/xtask bench`). It
//! synthesizes the real-size files it needs (`synth.rs`) unless they exist, then measures: the
//! device's copy bandwidth (the ceiling) and the read ceiling (the target's weight products as
//! plain reads, launched as a decode step launches them); for the 31B Q4_K_M target decode
//! tok/s at depths 0, 4K and 32K, t(k)/t(1) of verify batches at depth 4K, prefill tok/s at 512
//! and 4096 tokens, one MTP draft step and one DFlash block draft against a decode step; the
//! 26B-A4B decode tok/s and its share of copy (the bytes of its dense tensors and routed experts'
//! slices a step reads), and its verify batches over its decode step, as the synthetic router
//! picks experts and with the picks spread over them. Every figure is a median over repeats
//! after warm-up. Writes
//! `bench/results/<date>-<card>.json`, `.md` and `.svg`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use graph::DType;
use kernels::CudaBackend;
use serde_json::{json, Value};
use target::{
    DraftRequest, ExternalDrafter, LogitRows, Sampler, SamplingParams, Target, TargetOptions,
};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds of `f` over `reps` runs after `warm` warm-up runs.
fn time(warm: usize, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warm {
        f()?;
    }
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64());
    }
    Ok(median(v))
}

fn load(path: &Path, n_ctx: usize, max_batch: usize) -> Result<Target> {
    load_with(path, n_ctx, max_batch, &[])
}

/// As [`load`], on a backend compiled with the kernel knobs `knobs` (`CudaBackend::with_knobs`).
fn load_with(
    path: &Path,
    n_ctx: usize,
    max_batch: usize,
    knobs: &[(&str, usize)],
) -> Result<Target> {
    let file = Arc::new(gguf::GgufFile::open(path)?);
    let backend = CudaBackend::with_knobs(0, knobs)?;
    match backend.smem_carveout() {
        Some(p) => eprintln!(
            "step graphs' launches prefer {p} % of the unified L1 / shared memory as shared memory"
        ),
        None => eprintln!("the driver chooses every kernel's shared-memory share"),
    }
    let options = TargetOptions {
        n_ctx,
        max_batch,
        kv_dtype: DType::F16,
    };
    let t0 = Instant::now();
    let t = Target::load(file, Box::new(backend), &options, &mut |_, _| {})?;
    eprintln!(
        "loaded {} in {:.1} s",
        path.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(t)
}

/// Seconds of one greedy decode step at depth `depth` (positions assumed, not prefilled).
fn decode_step(t: &mut Target, depth: usize) -> Result<f64> {
    t.truncate(0)?;
    t.assume_positions_for_bench(depth)?;
    time(3, 15, || {
        t.forward_argmax(&[1000], LogitRows::Last)?;
        t.truncate(depth)?;
        Ok(())
    })
}

/// The tokens of a k-token verify batch.
fn verify_tokens(k: usize) -> Vec<u32> {
    (0..k as u32).map(|i| 1000 + i).collect()
}

/// Seconds of one verify batch of `tokens` (logits for every row) at context depth `depth`:
/// median of 9 after 2 warm-up runs, the cache cut back to `depth` after each.
fn verify_batch(t: &mut Target, tokens: &[u32], depth: usize) -> Result<f64> {
    t.truncate(0)?;
    t.assume_positions_for_bench(depth)?;
    time(2, 9, || {
        t.forward_argmax(tokens, LogitRows::All)?;
        t.truncate(depth)?;
        Ok(())
    })
}

/// Bytes one decode step reads from weights: every tensor once (the tied output head reads the
/// whole `token_embd`; its one-row embedding gather is not counted again).
fn weight_bytes(path: &Path) -> Result<u64> {
    let file = gguf::GgufFile::open(path)?;
    let mut total = 0;
    for t in file.tensors() {
        total += t.n_bytes();
    }
    Ok(total)
}

/// Bytes one MoE decode step reads from weights: every tensor once, but of each experts' stack
/// (`*_exps.weight`, one slice per expert along its last dimension) only the slices of the
/// `{arch}.expert_used_count` experts a token is routed to.
fn moe_active_bytes(path: &Path) -> Result<u64> {
    let file = gguf::GgufFile::open(path)?;
    let arch = file.architecture()?.to_string();
    let n_expert: u64 = file.get_as::<u32>(&format!("{arch}.expert_count"))?.into();
    let n_used: u64 = file
        .get_as::<u32>(&format!("{arch}.expert_used_count"))?
        .into();
    let mut total = 0;
    for t in file.tensors() {
        if !t.name().ends_with("_exps.weight") {
            total += t.n_bytes();
            continue;
        }
        if t.shape().last() != Some(&n_expert) || t.n_bytes() % n_expert != 0 {
            bail!(
                "{}: {} has shape {:?}, not one slice per expert of {n_expert}",
                path.display(),
                t.name(),
                t.shape()
            );
        }
        total += t.n_bytes() / n_expert * n_used;
    }
    Ok(total)
}

/// A decode step's weight products in the order and groups it launches them, for the read
/// ceiling: per layer q, k and v as one launch (the backend runs them as siblings), the output
/// projection, gate and up as one launch, down; then the output head (`output.weight`, else the
/// tied `token_embd.weight`, read whole). Each launch lists its tensors' byte sizes; also returns
/// their total.
fn read_launches(path: &Path) -> Result<(Vec<Vec<usize>>, u64)> {
    const ROLES: [&str; 7] = [
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ];
    // Roles that join the launch of the role before them in the same layer.
    let joins =
        |role: usize, prev: usize| matches!((role, prev), (1, 0) | (2, 0) | (2, 1) | (5, 4));
    let file = gguf::GgufFile::open(path)?;
    let mut products: Vec<(usize, usize, usize)> = Vec::new(); // (layer, role, bytes)
    let mut head = None;
    let mut tied = None;
    for t in file.tensors() {
        let name = t.name();
        let bytes = usize::try_from(t.n_bytes())
            .with_context(|| format!("{}: tensor {name}'s size", path.display()))?;
        if name == "output.weight" {
            head = Some(bytes);
        } else if name == "token_embd.weight" {
            tied = Some(bytes);
        } else if let Some(rest) = name.strip_prefix("blk.") {
            let Some((layer, tail)) = rest.split_once('.') else {
                continue;
            };
            let Some(role) = tail
                .strip_suffix(".weight")
                .and_then(|r| ROLES.iter().position(|&x| x == r))
            else {
                continue;
            };
            products.push((
                layer.parse().with_context(|| format!("tensor {name}"))?,
                role,
                bytes,
            ));
        }
    }
    let head = head
        .or(tied)
        .with_context(|| format!("{}: no output.weight or token_embd.weight", path.display()))?;
    if products.is_empty() {
        bail!("{}: no blk.N attention or FFN weights", path.display());
    }
    products.sort();
    let mut launches: Vec<Vec<usize>> = Vec::new();
    let mut prev: Option<(usize, usize)> = None;
    for &(layer, role, bytes) in &products {
        match (prev, launches.last_mut()) {
            (Some((l, r)), Some(last)) if l == layer && joins(role, r) => last.push(bytes),
            _ => launches.push(vec![bytes]),
        }
        prev = Some((layer, role));
    }
    launches.push(vec![head]);
    if let Some(l) = launches.iter().find(|l| l.len() > kernels::READ_MAX_RUNS) {
        bail!(
            "a read launch of {} runs (at most {})",
            l.len(),
            kernels::READ_MAX_RUNS
        );
    }
    let total = launches.iter().flatten().map(|&b| b as u64).sum();
    Ok((launches, total))
}

fn card() -> (String, String) {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name,driver_version", "--format=csv,noheader"])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let s = String::from_utf8_lossy(&o.stdout);
            let line = s.lines().next().unwrap_or("");
            let (name, driver) = line.split_once(',').unwrap_or((line, ""));
            (name.trim().to_string(), driver.trim().to_string())
        }
        _ => ("unknown".into(), "unknown".into()),
    }
}

/// What `--profile` takes (see [`run`]).
const PROFILES: [&str; 8] = [
    "mtp",
    "dflash",
    "decode",
    "decode-4k",
    "verify-16",
    "moe",
    "moe-verify-4",
    "moe-verify-16",
];

/// `xtask bench [--models DIR] [--out DIR] [--commit SHA] [--skip-moe] [--prefill-only]
/// [--skip-prefill] [--drafters-only] [--moe-only] [--no-spread]
/// [--profile mtp|dflash|decode|decode-4k|verify-16|moe|moe-verify-4|moe-verify-16] [--render FILE.json]` (`--render`:
/// only writes the markdown table and the plot of a results file from the GPU machine into
/// `--out`, for runs whose files did not all come back; `--prefill-only`: the copy bandwidth
/// and the prefill figures alone; `--skip-prefill`: all but those (the read ceiling comes with
/// the decode figures); `--drafters-only`: the drafter fractions alone; `--moe-only`: the copy
/// bandwidth and the 26B-A4B decode alone; all four for quicker A/B runs; `--no-spread`: not the
/// 26B-A4B's second reading with spread picks (`moe_verify_ratio_spread`). `--profile`: after
/// timing, one more MTP draft step, DFlash block draft, decode step (at the drafters' context),
/// decode step at depth 4K (`decode-4k`), 16-token verify at 4K (`verify-16`), 26B-A4B decode
/// step (`moe`) or 26B-A4B 4- or 16-token verify at depth 0 (`moe-verify-4`, `moe-verify-16`) runs inside
/// [`kernels::profiled`], for `ncu --profile-from-start off`).
pub fn run(args: &[String]) -> Result<()> {
    let mut models = PathBuf::from("/tmp/specula-synth");
    let mut out_dir = PathBuf::from("bench/results");
    let mut commit = String::from("unknown");
    let mut moe = true;
    let mut prefill_only = false;
    let mut skip_prefill = false;
    let mut drafters_only = false;
    let mut moe_only = false;
    let mut spread = true;
    let mut profile: Option<String> = None;
    let mut render: Option<PathBuf> = None;
    let mut out_given = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--models" => models = PathBuf::from(value()?),
            "--out" => {
                out_dir = PathBuf::from(value()?);
                out_given = true;
            }
            "--commit" => commit = value()?.clone(),
            "--skip-moe" => moe = false,
            "--skip-prefill" => skip_prefill = true,
            "--drafters-only" => {
                drafters_only = true;
                moe = false;
            }
            "--moe-only" => moe_only = true,
            "--no-spread" => spread = false,
            "--render" => render = Some(PathBuf::from(value()?)),
            "--profile" => {
                let what = value()?;
                if !PROFILES.contains(&what.as_str()) {
                    bail!("--profile takes {}, not {what}", PROFILES.join(", "));
                }
                profile = Some(what.clone());
            }
            "--prefill-only" => {
                prefill_only = true;
                moe = false;
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if let Some(file) = render {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a bench results file", file.display()))?;
        return write_results(&out_dir, v);
    }
    if prefill_only && (skip_prefill || drafters_only) {
        bail!("--prefill-only and --skip-prefill or --drafters-only leave nothing to measure");
    }
    if moe_only && (prefill_only || skip_prefill || drafters_only || !moe) {
        bail!("--moe-only measures the 26B-A4B decode alone: it takes no other selection");
    }
    if matches!(
        profile.as_deref(),
        Some("moe" | "moe-verify-4" | "moe-verify-16")
    ) && !moe
    {
        bail!("--profile moe, moe-verify-4 and moe-verify-16 profile the 26B-A4B, which this selection skips");
    }
    let target_profile = matches!(profile.as_deref(), Some("decode-4k" | "verify-16"));
    if target_profile && (prefill_only || drafters_only) {
        bail!("--profile decode-4k and verify-16 profile the decode and verify figures, which --prefill-only and --drafters-only skip");
    }
    if (prefill_only || skip_prefill || drafters_only || moe_only) && !out_given {
        bail!("a partial run (--prefill-only, --skip-prefill, --drafters-only, --moe-only) needs --out, so it does not replace the full record in bench/results");
    }
    if !kernels::cuda_available() {
        bail!("no CUDA device: `cargo xtask bench` runs on the GPU machine");
    }
    std::fs::create_dir_all(&models)?;
    let file = |name: &str, q: &str| models.join(format!("{name}.{q}.gguf"));
    let dense: &[(&str, &str)] = if moe_only {
        &[]
    } else {
        &[
            ("gemma4-31b", "q4_k_m"),
            ("gemma4-31b-assistant", "q8_0"),
            ("gemma4-31b-dflash", "q8_0"),
        ]
    };
    for &(name, q) in dense
        .iter()
        .chain(moe.then_some(&("gemma4-26b-a4b", "q4_k_m")))
    {
        let path = file(name, q);
        if !path.exists() {
            let t0 = Instant::now();
            let bytes = crate::synth::write_model(name, crate::synth::Quant::Native, &path)?;
            eprintln!(
                "synthesized {} ({:.2} GiB, {:.2} GB/s)",
                path.display(),
                bytes as f64 / (1u64 << 30) as f64,
                bytes as f64 / t0.elapsed().as_secs_f64() / 1e9
            );
        }
    }
    let (card, driver) = card();
    let mut r = serde_json::Map::new();
    r.insert("card".into(), json!(card));
    r.insert("driver".into(), json!(driver));
    r.insert("commit".into(), json!(commit));
    r.insert(
        "model".into(),
        json!("gemma4-31b Q4_K_M (synthetic, real shapes)"),
    );
    r.insert("kv_dtype".into(), json!("f16"));

    let target_path = file("gemma4-31b", "q4_k_m");
    let measures_decode = !prefill_only && !drafters_only && !moe_only;
    let (copy, read_secs) = {
        let mut probe = CudaBackend::new(0)?;
        let copy = probe.copy_bandwidth(1 << 30, 20)?;
        if measures_decode {
            let (launches, read_bytes) = read_launches(&target_path)?;
            let secs = probe
                .read_pass_seconds(&launches, 9)
                .context("measuring the read ceiling")?;
            let gbs = read_bytes as f64 / secs / 1e9;
            r.insert("read_ceiling_gbs".into(), json!(gbs));
            r.insert("read_ceiling_fraction".into(), json!(gbs * 1e9 / copy));
            r.insert("read_ceiling_tok_s".into(), json!(1.0 / secs));
            eprintln!(
                "read ceiling: {} launches, {:.2} GB in {:.2} ms: {gbs:.0} GB/s = {:.3} of copy",
                launches.len(),
                read_bytes as f64 / 1e9,
                secs * 1e3,
                gbs * 1e9 / copy
            );
            (copy, secs)
        } else {
            (copy, f64::NAN)
        }
    };
    r.insert("copy_bandwidth_gbs".into(), json!(copy / 1e9));
    eprintln!("copy bandwidth {:.0} GB/s", copy / 1e9);
    let moe_path = file("gemma4-26b-a4b", "q4_k_m");
    if moe_only {
        moe_decode(&moe_path, copy, profile.as_deref(), spread, &mut r)?;
        return write_results(&out_dir, Value::Object(r));
    }

    let bytes = weight_bytes(&target_path)?;
    let mut t = load(&target_path, 32768 + 64, 512)?;
    if measures_decode {
        let step0 = decode_and_verify(&mut t, bytes, copy, profile.as_deref(), &mut r)?;
        r.insert("decode_vs_read_ceiling".into(), json!(read_secs / step0));
    }
    if !skip_prefill && !drafters_only {
        let prefill = prefill_rates(&mut t)?;
        r.insert("prefill_tok_s".into(), json!(prefill));
    }
    if prefill_only {
        return write_results(&out_dir, Value::Object(r));
    }

    // Drafters, against the decode step at the same short context.
    let prompt: Vec<u32> = (0..64u32).map(|i| 1000 + i * 31).collect();
    let sampler = Sampler::new(SamplingParams::default());
    let profiles = |what: &str| profile.as_deref() == Some(what);
    let drafter_fraction = |d: &mut dyn ExternalDrafter,
                            name: &str,
                            gamma: usize,
                            t: &mut Target|
     -> Result<(f64, f64)> {
        t.truncate(0)?;
        let layers = d.required_layers();
        let out = t.forward(&prompt, LogitRows::Last, &layers, false)?;
        d.prefill_chunk(t, &out)?;
        d.begin(t, &prompt, &out)?;
        let h = t.config().n_embd;
        let last_hidden = out.hidden[out.hidden.len() - h..].to_vec();
        let mut history = prompt.clone();
        history.push(1234);
        let request = DraftRequest {
            history: &history,
            position: t.n_past(),
            last_hidden: &last_hidden,
            gamma,
        };
        let draft = time(3, 15, || {
            d.draft(t, &request, &sampler)?;
            Ok(())
        })?;
        let n = t.n_past();
        let step_once = |t: &mut Target| -> Result<()> {
            t.forward_argmax(&[1234], LogitRows::Last)?;
            t.truncate(n)?;
            Ok(())
        };
        let step = time(3, 15, || step_once(&mut *t))?;
        if profiles(name) {
            kernels::profiled(0, || -> Result<()> {
                d.draft(t, &request, &sampler)?;
                Ok(())
            })?;
        }
        // `--profile decode`: one decode step at the drafters' context, taken once (here, in the
        // first drafter's setup).
        if name == "mtp" && profiles("decode") {
            kernels::profiled(0, || step_once(&mut *t))?;
        }
        Ok((draft, step))
    };
    let assistant = Arc::new(gguf::GgufFile::open(file("gemma4-31b-assistant", "q8_0"))?);
    let mut mtp = drafter_mtp::MtpDrafter::load(assistant, &mut t)?;
    let (d, s) = drafter_fraction(&mut mtp, "mtp", 1, &mut t)?;
    eprintln!(
        "mtp draft step {:.2} ms vs decode {:.2} ms: {:.3}",
        d * 1e3,
        s * 1e3,
        d / s
    );
    r.insert("mtp_draft_fraction".into(), json!(d / s));
    drop(mtp);
    let mut dflash =
        drafter_dflash::DflashDrafter::open(&file("gemma4-31b-dflash", "q8_0"), &mut t, None)?;
    let gamma = dflash.max_gamma();
    let (d, s) = drafter_fraction(&mut dflash, "dflash", gamma, &mut t)?;
    eprintln!(
        "dflash block draft (B = {}) {:.2} ms vs decode {:.2} ms: {:.3}",
        gamma + 1,
        d * 1e3,
        s * 1e3,
        d / s
    );
    r.insert("dflash_draft_fraction".into(), json!(d / s));
    drop(dflash);
    drop(t);

    if moe {
        moe_decode(&moe_path, copy, profile.as_deref(), spread, &mut r)?;
    }

    write_results(&out_dir, Value::Object(r))
}

/// The 26B-A4B verify batches the bench times: 2 to 8 tokens are what an MTP drafter's drafts
/// verify, 16 a DFlash block.
const MOE_VERIFY_TOKENS: [usize; 6] = [2, 3, 4, 6, 8, 16];

/// The 26B-A4B decode at depth 0 into `r` (`moe_decode_tok_s`, and `moe_decode_bw_fraction`:
/// the weight bytes a step reads, [`moe_active_bytes`], per second over the copy bandwidth
/// `copy` in bytes/s) and its verify batches of [`MOE_VERIFY_TOKENS`] tokens at depth 0
/// (`moe_verify_ratio`: t(k) over the decode step); with `--profile moe` (`moe-verify-4`,
/// `moe-verify-16`), one more step (a 4- or 16-token verify batch) inside [`kernels::profiled`];
/// then, with `spread`, the same ratios with the router's picks spread ([`moe_spread_verify`],
/// `moe_verify_ratio_spread`).
fn moe_decode(
    path: &Path,
    copy: f64,
    profile: Option<&str>,
    spread: bool,
    r: &mut serde_json::Map<String, Value>,
) -> Result<()> {
    let bytes = moe_active_bytes(path)?;
    let mut m = load(path, 4096, 16)?;
    let s = decode_step(&mut m, 0)?;
    eprintln!(
        "26B-A4B decode at depth 0: {:.2} ms ({:.1} tok/s)",
        s * 1e3,
        1.0 / s
    );
    r.insert("moe_decode_tok_s".into(), json!(1.0 / s));
    let fraction = bytes as f64 / s / copy;
    eprintln!(
        "26B-A4B decode depth 0: {:.2} GB a step, {:.0} GB/s = {fraction:.3} of copy",
        bytes as f64 / 1e9,
        bytes as f64 / s / 1e9
    );
    r.insert("moe_decode_bw_fraction".into(), json!(fraction));
    // Verify batches at depth 0, as a 26B-A4B target's speculative decoding runs them.
    let verify = moe_verify_ratios(&mut m, s, "26B-A4B")?;
    r.insert("moe_verify_ratio".into(), json!(verify));
    let profiled_batch = match profile {
        Some("moe") => Some((verify_tokens(1), LogitRows::Last)),
        Some("moe-verify-4") => Some((verify_tokens(4), LogitRows::All)),
        Some("moe-verify-16") => Some((verify_tokens(16), LogitRows::All)),
        _ => None,
    };
    if let Some((tokens, rows)) = profiled_batch {
        kernels::profiled(0, || -> Result<()> {
            m.forward_argmax(&tokens, rows)?;
            m.truncate(0)?;
            Ok(())
        })?;
    }
    drop(m);
    if !spread {
        return Ok(());
    }
    // A second reading, not a replacement: a failure here is reported and leaves the rest.
    match moe_spread_verify(path) {
        Ok(spread) => {
            r.insert("moe_verify_ratio_spread".into(), json!(spread));
        }
        Err(e) => eprintln!("26B-A4B spread picks: not measured: {e:#}"),
    }
    Ok(())
}

/// The 26B-A4B's verify batches of [`MOE_VERIFY_TOKENS`] tokens at depth 0 over its decode step,
/// the batches and the step alike with the router's picks spread over the experts
/// (`SPECULA_MOE_SPREAD_IDS=1`, whose outputs are wrong): the synthetic model's random router sends a batch to few experts (a median of 15
/// a layer for 16 tokens), which flatters the expert-grouped products; a trained router spreads
/// a batch further (bench/NOTES.md, thirty-fifth session).
fn moe_spread_verify(path: &Path) -> Result<BTreeMap<String, f64>> {
    let mut m = load_with(path, 4096, 16, &[("SPECULA_MOE_SPREAD_IDS", 1)])?;
    let s = decode_step(&mut m, 0)?;
    eprintln!(
        "26B-A4B spread picks: decode at depth 0: {:.2} ms ({:.1} tok/s)",
        s * 1e3,
        1.0 / s
    );
    moe_verify_ratios(&mut m, s, "26B-A4B spread picks:")
}

/// The 26B-A4B's verify batches of [`MOE_VERIFY_TOKENS`] tokens at depth 0 over its decode step
/// of `step` seconds, each logged after `label` ("26B-A4B verify k=4: …").
fn moe_verify_ratios(m: &mut Target, step: f64, label: &str) -> Result<BTreeMap<String, f64>> {
    let mut verify = BTreeMap::new();
    for k in MOE_VERIFY_TOKENS {
        let v = verify_batch(m, &verify_tokens(k), 0)?;
        eprintln!(
            "{label} verify k={k}: {:.2} ms, t(k)/t(1) {:.2}",
            v * 1e3,
            v / step
        );
        verify.insert(k.to_string(), v / step);
    }
    Ok(verify)
}

/// Decode tok/s at depths 0, 4K and 32K, the bandwidth fraction at depth 0 and the verify
/// ratios t(k)/t(1) at 4K, into `r`; returns the seconds of a decode step at depth 0.
fn decode_and_verify(
    t: &mut Target,
    bytes: u64,
    copy: f64,
    profile: Option<&str>,
    r: &mut serde_json::Map<String, Value>,
) -> Result<f64> {
    let mut decode = BTreeMap::new();
    let mut step0 = 0.0;
    for depth in [0usize, 4096, 32768] {
        let s = decode_step(t, depth)?;
        if depth == 0 {
            step0 = s;
        }
        if depth == 4096 && profile == Some("decode-4k") {
            kernels::profiled(0, || -> Result<()> {
                t.forward_argmax(&[1000], LogitRows::Last)?;
                t.truncate(depth)?;
                Ok(())
            })?;
        }
        eprintln!(
            "decode at depth {depth}: {:.2} ms ({:.1} tok/s)",
            s * 1e3,
            1.0 / s
        );
        decode.insert(depth.to_string(), 1.0 / s);
    }
    r.insert("decode_tok_s".into(), json!(decode));
    let bw = bytes as f64 / step0;
    r.insert("weight_bytes".into(), json!(bytes));
    r.insert("decode_bw_fraction".into(), json!(bw / copy));
    eprintln!(
        "decode depth 0: {:.0} GB/s = {:.3} of copy",
        bw / 1e9,
        bw / copy
    );

    let mut verify = BTreeMap::new();
    let mut t1 = 0.0;
    for k in 1..=16usize {
        let tokens = verify_tokens(k);
        let s = verify_batch(t, &tokens, 4096)?;
        if k == 1 {
            t1 = s;
        }
        if k == 16 && profile == Some("verify-16") {
            kernels::profiled(0, || -> Result<()> {
                t.forward_argmax(&tokens, LogitRows::All)?;
                t.truncate(4096)?;
                Ok(())
            })?;
        }
        verify.insert(k.to_string(), s / t1);
        eprintln!("verify k={k}: {:.2} ms, t(k)/t(1) {:.2}", s * 1e3, s / t1);
    }
    r.insert("verify_ratio".into(), json!(verify));
    Ok(step0)
}

/// Prefill tok/s of 512- and 4,096-token prompts in 512-token chunks.
fn prefill_rates(t: &mut Target) -> Result<BTreeMap<String, f64>> {
    let mut prefill = BTreeMap::new();
    for n in [512usize, 4096] {
        let prompt: Vec<u32> = (0..n as u32).map(|i| 1000 + (i * 7919) % 200_000).collect();
        let s = time(1, 3, || {
            t.truncate(0)?;
            for chunk in prompt.chunks(512) {
                t.forward(chunk, LogitRows::Last, &[], false)?;
            }
            Ok(())
        })?;
        eprintln!("prefill {n}: {:.0} tok/s", n as f64 / s);
        prefill.insert(n.to_string(), n as f64 / s);
    }
    Ok(prefill)
}

fn write_results(dir: &Path, v: Value) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let card = v["card"].as_str().unwrap_or("card").replace(' ', "-");
    let date = std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "undated".into());
    let stem = dir.join(format!("{date}-{card}"));
    std::fs::write(
        stem.with_extension("json"),
        serde_json::to_string_pretty(&v)?,
    )?;
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let mut md = format!(
        "# {} — {} (driver {}, commit {})\n\n| figure | value |\n|---|---|\n",
        v["model"].as_str().unwrap_or(""),
        v["card"].as_str().unwrap_or(""),
        v["driver"].as_str().unwrap_or(""),
        v["commit"].as_str().unwrap_or("")
    );
    md += &format!("| copy bandwidth | {:.0} GB/s |\n", f("copy_bandwidth_gbs"));
    for (d, x) in v["decode_tok_s"].as_object().into_iter().flatten() {
        md += &format!(
            "| decode tok/s at depth {d} | {:.1} |\n",
            x.as_f64().unwrap_or(0.0)
        );
    }
    md += &format!(
        "| decode bandwidth / copy (depth 0) | {:.3} |\n",
        f("decode_bw_fraction")
    );
    if v.get("read_ceiling_gbs").is_some() {
        md += &format!(
            "| read ceiling: the products' bytes as plain reads, launched as a step launches them | {:.0} GB/s = {:.3} of copy ({:.1} tok/s) |\n",
            f("read_ceiling_gbs"),
            f("read_ceiling_fraction"),
            f("read_ceiling_tok_s")
        );
    }
    if v.get("decode_vs_read_ceiling").is_some() {
        md += &format!(
            "| decode at depth 0 / read ceiling | {:.3} |\n",
            f("decode_vs_read_ceiling")
        );
    }
    for (n, x) in v["prefill_tok_s"].as_object().into_iter().flatten() {
        md += &format!(
            "| prefill tok/s at {n} | {:.0} |\n",
            x.as_f64().unwrap_or(0.0)
        );
    }
    md += &format!(
        "| t(16)/t(1) at depth 4K | {:.2} |\n| MTP draft / decode step | {:.3} |\n| DFlash block / decode step | {:.3} |\n| 26B-A4B decode tok/s | {} |\n",
        v["verify_ratio"]["16"].as_f64().unwrap_or(f64::NAN),
        f("mtp_draft_fraction"),
        f("dflash_draft_fraction"),
        v["moe_decode_tok_s"]
            .as_f64()
            .map_or_else(|| "not measured".to_string(), |x| format!("{x:.1}"))
    );
    if let Some(x) = v["moe_decode_bw_fraction"].as_f64() {
        md += &format!("| 26B-A4B decode bandwidth / copy | {x:.3} |\n");
    }
    for (k, x) in series(&v, "moe_verify_ratio") {
        md += &format!("| 26B-A4B verify t({k}) / decode step at depth 0 | {x:.2} |\n");
    }
    for (k, x) in series(&v, "moe_verify_ratio_spread") {
        md += &format!(
            "| 26B-A4B verify t({k}) / decode step, picks spread over the experts (SPECULA_MOE_SPREAD_IDS) | {x:.2} |\n"
        );
    }
    std::fs::write(stem.with_extension("md"), md)?;
    std::fs::write(stem.with_extension("svg"), svg(&v))?;
    eprintln!("wrote {}.{{json,md,svg}}", stem.display());
    Ok(())
}

/// The numeric entries of the object `v[key]` (`{"4": 1.8, "16": 5.1}`) as (key, value) pairs in
/// key order; none where it is absent.
fn series(v: &Value, key: &str) -> Vec<(f64, f64)> {
    let mut s: Vec<(f64, f64)> = v[key]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, x)| Some((k.parse().ok()?, x.as_f64()?)))
        .collect();
    s.sort_by(|a, b| a.0.total_cmp(&b.0));
    s
}

/// Two small line plots: t(k)/t(1) against k, decode tok/s against depth.
fn svg(v: &Value) -> String {
    let plot = |x0: f64, title: &str, pts: &[(f64, f64)], xlabel: &str| -> String {
        let (w, h) = (360.0, 220.0);
        let xmax = pts.iter().map(|p| p.0).fold(1.0, f64::max);
        let ymax = pts.iter().map(|p| p.1).fold(1e-9, f64::max) * 1.1;
        let px = |x: f64| x0 + 40.0 + x / xmax * (w - 60.0);
        let py = |y: f64| 30.0 + (1.0 - y / ymax) * (h - 60.0);
        let line: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let mut s = format!(
            "<text x=\"{:.0}\" y=\"18\" font-size=\"13\">{title}</text><line x1=\"{:.0}\" y1=\"{:.0}\" x2=\"{:.0}\" y2=\"{:.0}\" stroke=\"black\"/><line x1=\"{:.0}\" y1=\"30\" x2=\"{:.0}\" y2=\"{:.0}\" stroke=\"black\"/><polyline fill=\"none\" stroke=\"steelblue\" stroke-width=\"2\" points=\"{}\"/>",
            x0 + 40.0, px(0.0), py(0.0), px(xmax), py(0.0), px(0.0), px(0.0), py(0.0), line.join(" ")
        );
        for &(x, y) in pts {
            s += &format!("<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"steelblue\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\">{y:.2}</text>", px(x), py(y), px(x) + 3.0, py(y) - 5.0);
        }
        s += &format!(
            "<text x=\"{:.0}\" y=\"{:.0}\" font-size=\"11\">{xlabel} (max {xmax})</text>",
            x0 + 150.0,
            h - 8.0
        );
        s
    };
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"760\" height=\"230\" font-family=\"sans-serif\">{}{}</svg>\n",
        plot(0.0, "verify t(k)/t(1), depth 4K", &series(v, "verify_ratio"), "k"),
        plot(390.0, "decode tok/s vs context depth", &series(v, "decode_tok_s"), "depth")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A MoE step reads every tensor but of the experts' stacks only the routed experts'
    /// slices: the tiny MoE fixture (4 experts, 2 used) against its tensors counted by hand.
    #[test]
    fn moe_steps_read_only_their_experts_slices() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/moe.gguf");
        let file = gguf::GgufFile::open(&path).unwrap();
        let (mut dense, mut experts) = (0u64, 0u64);
        for t in file.tensors() {
            if t.name().contains("_exps.weight") {
                experts += t.n_bytes();
            } else {
                dense += t.n_bytes();
            }
        }
        assert!(experts > 0 && dense > 0);
        assert_eq!(moe_active_bytes(&path).unwrap(), dense + experts / 2);
        assert_eq!(weight_bytes(&path).unwrap(), dense + experts);
    }

    /// The file with extension `ext` that `write_results` wrote into `dir`.
    fn written(dir: &Path, ext: &str) -> PathBuf {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == ext))
            .unwrap()
    }

    #[test]
    fn results_are_written_as_json_markdown_and_svg() {
        let dir = std::env::temp_dir().join(format!("specula-bench-test-{}", std::process::id()));
        let v = json!({
            "card": "Test Card", "driver": "1.0", "commit": "abc", "model": "m",
            "copy_bandwidth_gbs": 3000.0, "decode_bw_fraction": 0.27,
            "decode_tok_s": {"0": 44.0, "4096": 28.0, "32768": 16.0},
            "verify_ratio": {"1": 1.0, "2": 1.2, "16": 5.0},
            "prefill_tok_s": {"512": 220.0, "4096": 190.0},
            "mtp_draft_fraction": 0.07, "dflash_draft_fraction": 0.55,
            "read_ceiling_gbs": 3500.0, "read_ceiling_fraction": 0.8333,
            "read_ceiling_tok_s": 190.0, "decode_vs_read_ceiling": 0.51
        });
        write_results(&dir, v.clone()).unwrap();
        let file = written(&dir, "json");
        let back: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(back, v);
        assert!(file
            .file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with("-Test-Card.json"));
        let md = std::fs::read_to_string(file.with_extension("md")).unwrap();
        assert!(md.contains("| t(16)/t(1) at depth 4K | 5.00 |"), "{md}");
        assert!(
            md.contains("| 3500 GB/s = 0.833 of copy (190.0 tok/s) |"),
            "{md}"
        );
        assert!(
            md.contains("| decode at depth 0 / read ceiling | 0.510 |"),
            "{md}"
        );
        assert!(
            md.contains("| 26B-A4B decode tok/s | not measured |"),
            "{md}"
        );
        assert!(!md.contains("26B-A4B decode bandwidth"), "{md}");
        // With the MoE figures, their two rows.
        let moe_dir = dir.join("moe");
        let mut with_moe = v.clone();
        with_moe["moe_decode_tok_s"] = json!(203.0);
        with_moe["moe_decode_bw_fraction"] = json!(0.128);
        write_results(&moe_dir, with_moe).unwrap();
        let md = std::fs::read_to_string(written(&moe_dir, "md")).unwrap();
        assert!(md.contains("| 26B-A4B decode tok/s | 203.0 |"), "{md}");
        assert!(
            md.contains("| 26B-A4B decode bandwidth / copy | 0.128 |"),
            "{md}"
        );
        let svg = std::fs::read_to_string(file.with_extension("svg")).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains(">5.00<") && svg.contains(">44.00<"), "{svg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The read ceiling's launches follow a decode step's: per layer q, k, v together, the
    /// output projection, gate and up together, down; the head last, whole.
    #[test]
    fn read_launches_group_products_as_a_step_launches_them() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/dense.gguf");
        let file = gguf::GgufFile::open(&path).unwrap();
        let size = |name: &str| {
            file.tensors()
                .iter()
                .find(|t| t.name() == name)
                .map(|t| t.n_bytes() as usize)
        };
        let (launches, total) = read_launches(&path).unwrap();
        let n_layers = (0..)
            .take_while(|l| size(&format!("blk.{l}.attn_q.weight")).is_some())
            .count();
        assert!(n_layers > 0);
        assert_eq!(launches.len(), 4 * n_layers + 1, "{launches:?}");
        for l in 0..n_layers {
            let w = |role: &str| size(&format!("blk.{l}.{role}.weight"));
            let qkv: Vec<usize> = ["attn_q", "attn_k", "attn_v"]
                .iter()
                .filter_map(|r| w(r))
                .collect();
            assert_eq!(launches[4 * l], qkv, "layer {l}");
            assert_eq!(launches[4 * l + 1], vec![w("attn_output").unwrap()]);
            assert_eq!(
                launches[4 * l + 2],
                vec![w("ffn_gate").unwrap(), w("ffn_up").unwrap()]
            );
            assert_eq!(launches[4 * l + 3], vec![w("ffn_down").unwrap()]);
        }
        let head = size("output.weight").or(size("token_embd.weight")).unwrap();
        assert_eq!(launches.last().unwrap(), &vec![head]);
        assert_eq!(
            total,
            launches.iter().flatten().map(|&b| b as u64).sum::<u64>()
        );
    }

    /// `--render` rebuilds the table and plot of a results file without a GPU; bad flag
    /// combinations are refused before any device work.
    #[test]
    fn render_and_flag_checks_need_no_gpu() {
        let dir = std::env::temp_dir().join(format!("specula-render-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let input = dir.join("in.json");
        let v = json!({
            "card": "Render Card", "driver": "1.0", "commit": "abc", "model": "m",
            "decode_tok_s": {"0": 70.0}, "verify_ratio": {"1": 1.0, "16": 2.0},
            "mtp_draft_fraction": 0.04, "moe_verify_ratio": {"16": 2.5, "4": 1.25},
            "moe_verify_ratio_spread": {"4": 1.75}
        });
        std::fs::write(&input, v.to_string()).unwrap();
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let out = dir.join("out");
        run(&args(&[
            "--render",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]))
        .unwrap();
        let md = std::fs::read_to_string(written(&out, "md")).unwrap();
        assert!(md.contains("| MTP draft / decode step | 0.040 |"), "{md}");
        // The 26B-A4B's verify ratios in batch order.
        let v4 = md.find("| 26B-A4B verify t(4) / decode step at depth 0 | 1.25 |");
        let v16 = md.find("| 26B-A4B verify t(16) / decode step at depth 0 | 2.50 |");
        assert!(v4.is_some() && v4 < v16, "{md}");
        let spread = md.find("| 26B-A4B verify t(4) / decode step, picks spread over the experts (SPECULA_MOE_SPREAD_IDS) | 1.75 |");
        assert!(spread.is_some() && v16 < spread, "{md}");
        let bad = dir.join("bad.json");
        std::fs::write(&bad, "not json").unwrap();
        let err = run(&args(&["--render", bad.to_str().unwrap()])).unwrap_err();
        assert!(
            format!("{err:#}").contains("not a bench results file"),
            "{err:#}"
        );
        for (refused, why) in [
            (
                &["--prefill-only", "--drafters-only", "--out", "x"][..],
                "leave nothing to measure",
            ),
            (&["--drafters-only"][..], "needs --out"),
            (&["--profile", "everything"][..], "--profile takes"),
            (
                &["--moe-only", "--skip-prefill", "--out", "x"][..],
                "no other selection",
            ),
            (&["--moe-only"][..], "needs --out"),
            (
                &["--skip-moe", "--profile", "moe", "--out", "x"][..],
                "which this selection skips",
            ),
            (
                &["--drafters-only", "--profile", "verify-16", "--out", "x"][..],
                "which --prefill-only and --drafters-only skip",
            ),
        ] {
            let err = run(&args(refused)).unwrap_err().to_string();
            assert!(err.contains(why), "{refused:?}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn median_is_the_middle_value() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![5.0]), 5.0);
    }
}

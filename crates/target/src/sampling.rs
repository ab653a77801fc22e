//! Token sampling: greedy, temperature, top-k, top-p, min-p and repetition penalty, with a
//! seeded generator (same seed, same output).
//!
//! Order (as transformers applies its logits processors): repetition penalty → temperature →
//! top-k → top-p → min-p → draw. Temperature 0 is greedy: the first index of the largest
//! (penalised) logit.

/// Sampling settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (0: off).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `p` (1: off).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0: off).
    pub min_p: f32,
    /// Divide positive / multiply negative logits of already-seen tokens (1: off).
    pub repetition_penalty: f32,
    /// Seed of the generator.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Whether sampling is greedy.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// Checks the ranges; the message names the bad setting.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!(
                "temperature {} must be a finite number ≥ 0",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p {} must be in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min-p {} must be in [0, 1]", self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(format!(
                "repetition penalty {} must be a finite number > 0",
                self.repetition_penalty
            ));
        }
        Ok(())
    }
}

/// Index of the first largest value.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// A sampler with its own seeded generator.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    state: u64,
}

impl Sampler {
    /// A sampler; the generator starts from `params.seed`.
    pub fn new(params: SamplingParams) -> Sampler {
        let state = params.seed ^ 0x5DEE_CE66_D1CE_4E5B;
        Sampler { params, state }
    }

    /// The settings.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Uniform in [0, 1) (splitmix64).
    pub fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `logits` with the repetition penalty applied for the tokens in `history`.
    fn penalised(&self, logits: &[f32], history: &[u32]) -> Vec<f32> {
        let mut out = logits.to_vec();
        let p = self.params.repetition_penalty;
        if p != 1.0 {
            let mut seen = vec![false; out.len()];
            for &t in history {
                if let Some(s) = seen.get_mut(t as usize) {
                    *s = true;
                }
            }
            for (v, s) in out.iter_mut().zip(seen) {
                if s {
                    *v = if *v > 0.0 { *v / p } else { *v * p };
                }
            }
        }
        out
    }

    /// The distribution a non-greedy draw samples from (zeros outside the kept set). For
    /// greedy settings, all mass on the argmax.
    pub fn distribution(&self, logits: &[f32], history: &[u32]) -> Vec<f32> {
        let logits = self.penalised(logits, history);
        let n = logits.len();
        let mut probs = vec![0.0f32; n];
        if n == 0 {
            return probs;
        }
        if self.params.is_greedy() {
            probs[argmax(&logits) as usize] = 1.0;
            return probs;
        }
        let t = self.params.temperature;
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        let weights: Vec<f64> = order
            .iter()
            .map(|&i| (f64::from(logits[i] - max) / f64::from(t)).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut keep = n;
        if self.params.top_k > 0 {
            keep = keep.min(self.params.top_k);
        }
        if self.params.top_p < 1.0 {
            let mut acc = 0.0;
            for (j, w) in weights.iter().enumerate().take(keep) {
                acc += w / total;
                if acc >= f64::from(self.params.top_p) {
                    keep = j + 1;
                    break;
                }
            }
        }
        if self.params.min_p > 0.0 {
            let floor = weights[0] * f64::from(self.params.min_p);
            keep = keep.min(weights.iter().take_while(|&&w| w >= floor).count().max(1));
        }
        let kept: f64 = weights[..keep].iter().sum();
        for (j, &i) in order[..keep].iter().enumerate() {
            probs[i] = (weights[j] / kept) as f32;
        }
        probs
    }

    /// Draws one token index from `probs` (a distribution).
    pub fn draw(&mut self, probs: &[f32]) -> u32 {
        let u = self.uniform();
        let mut acc = 0.0f64;
        let mut last = 0;
        for (i, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                acc += f64::from(p);
                last = i;
                if u < acc {
                    return i as u32;
                }
            }
        }
        last as u32
    }

    /// Picks the next token from `logits` given the tokens so far.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        if self.params.is_greedy() {
            return argmax(&self.penalised(logits, history));
        }
        let probs = self.distribution(logits, history);
        self.draw(&probs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            seed: 7,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(params(0.0));
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0], &[]), 1);
    }

    #[test]
    fn repetition_penalty_changes_the_greedy_choice() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..params(0.0)
        };
        let mut s = Sampler::new(p);
        assert_eq!(s.sample(&[1.0, 3.0, 2.0], &[1]), 2);
        assert_eq!(s.sample(&[-1.0, -3.0, -1.5], &[0]), 2);
    }

    #[test]
    fn filters_keep_the_right_sets() {
        let logits = [2.0f32, 1.0, 0.0, -1.0, -8.0];
        let top_k = Sampler::new(SamplingParams {
            top_k: 2,
            ..params(1.0)
        })
        .distribution(&logits, &[]);
        assert!(top_k[0] > 0.0 && top_k[1] > 0.0 && top_k[2..].iter().all(|&p| p == 0.0));
        let top_p = Sampler::new(SamplingParams {
            top_p: 0.5,
            ..params(1.0)
        })
        .distribution(&logits, &[]);
        assert_eq!(top_p, [1.0, 0.0, 0.0, 0.0, 0.0]);
        let min_p = Sampler::new(SamplingParams {
            min_p: 0.3,
            ..params(1.0)
        })
        .distribution(&logits, &[]);
        assert!(min_p[1] > 0.0 && min_p[2] == 0.0);
        let sum: f32 = min_p.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
    }

    #[test]
    fn same_seed_same_draws_and_frequencies_follow_the_distribution() {
        let logits = [0.0f32, 1.0, 2.0];
        let mut a = Sampler::new(params(1.0));
        let mut b = Sampler::new(params(1.0));
        let da: Vec<u32> = (0..50).map(|_| a.sample(&logits, &[])).collect();
        let db: Vec<u32> = (0..50).map(|_| b.sample(&logits, &[])).collect();
        assert_eq!(da, db);
        let probs = a.distribution(&logits, &[]);
        let n = 20_000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[a.draw(&probs) as usize] += 1;
        }
        for i in 0..3 {
            let f = counts[i] as f32 / n as f32;
            assert!(
                (f - probs[i]).abs() < 0.015,
                "token {i}: frequency {f}, probability {}",
                probs[i]
            );
        }
    }

    #[test]
    fn validation_names_the_setting() {
        assert!(SamplingParams {
            top_p: 0.0,
            ..params(1.0)
        }
        .validate()
        .unwrap_err()
        .contains("top-p"));
        assert!(params(-1.0).validate().unwrap_err().contains("temperature"));
    }
}

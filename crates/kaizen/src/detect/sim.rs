//! Seeded simulation of per-tool traffic (the test harness for the detector's error rates):
//! a splitmix64 generator, lognormal latency with a Pareto tail, a daily shape, and bursty
//! arrivals (a Poisson rate modulated by on/off bursts that also slow calls down).

use super::input::{CallClass, CallEvent};

/// splitmix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough for simulation.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
    spare: Option<f64>,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed, spare: None }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller, the second value kept for the next call).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * t.sin());
        r * t.cos()
    }

    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * self.uniform().ln()
    }

    pub fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda <= 0.0 {
            return 0;
        }
        if lambda < 30.0 {
            let limit = (-lambda).exp();
            let mut k = 0;
            let mut p = self.uniform();
            while p > limit {
                k += 1;
                p *= self.uniform();
            }
            return k;
        }
        (lambda + lambda.sqrt() * self.normal()).round().max(0.0) as u64
    }
}

/// The shape of one tool's latency.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub name: &'static str,
    pub median_ms: f64,
    /// Spread of ln(latency).
    pub sigma: f64,
    /// Share of calls that fall into the Pareto tail, and the tail's index (≤ 2: infinite variance).
    pub tail_p: f64,
    pub tail_alpha: f64,
}

/// A tool whose calls are alike: p90/p10 ≈ 3.6.
pub const MODERATE: Shape = Shape { name: "moderate", median_ms: 2.0, sigma: 0.5, tail_p: 0.02, tail_alpha: 1.5 };
/// A tool whose calls differ a lot: p90/p10 ≈ 7.7, 5 % in a heavier tail.
pub const WIDE: Shape = Shape { name: "wide", median_ms: 20.0, sigma: 0.8, tail_p: 0.05, tail_alpha: 1.2 };

/// One tool's traffic: rate, bursts, daily shape, errors; `latency_step` and `error_p` are
/// the knobs a test turns to inject a regression.
#[derive(Debug, Clone)]
pub struct Traffic {
    pub op: usize,
    pub shape: Shape,
    /// Mean calls per second outside bursts.
    pub rate: f64,
    /// Bursts: rate × `burst_mult`, calls × `burst_slowdown`, lasting `burst_secs` on average,
    /// starting every `burst_every_secs` on average.
    pub burst_mult: f64,
    pub burst_slowdown: f64,
    pub burst_secs: f64,
    pub burst_every_secs: f64,
    /// Daily shape: latency × (1 + a·sin), rate × (1 + b·sin), over 24 h.
    pub daily_latency: f64,
    pub daily_rate: f64,
    /// Error probability per call, and the chance that a failed call is retried and fails again.
    pub error_p: f64,
    pub retry_p: f64,
    /// Latency multiplier (1 = normal).
    pub latency_step: f64,
    rng: SplitMix64,
    burst_until: f64,
    next_burst: f64,
    phase: f64,
}

impl Traffic {
    pub fn new(op: usize, shape: Shape, rate: f64, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let next_burst = rng.exponential(300.0);
        let phase = rng.uniform() * 86_400.0;
        Self {
            op,
            shape,
            rate,
            burst_mult: 4.0,
            burst_slowdown: 1.15,
            burst_secs: 20.0,
            burst_every_secs: 300.0,
            daily_latency: 0.2,
            daily_rate: 0.5,
            error_p: 0.001,
            retry_p: 0.2,
            latency_step: 1.0,
            rng,
            burst_until: 0.0,
            next_burst,
            phase,
        }
    }

    fn latency_us(&mut self, mult: f64) -> u64 {
        let s = self.shape;
        let mut ms = s.median_ms * mult * (s.sigma * self.rng.normal()).exp();
        if self.rng.uniform() < s.tail_p {
            // Pareto with x_min = 3: three times slower or much worse.
            ms *= 3.0 * self.rng.uniform().powf(-1.0 / s.tail_alpha);
        }
        (ms * 1000.0).clamp(1.0, 1e10) as u64
    }

    /// Appends the calls of second `sec` (unix seconds) to `out`.
    pub fn second(&mut self, sec: u64, out: &mut Vec<CallEvent>) {
        let t = sec as f64;
        if t >= self.next_burst {
            self.burst_until = t + self.rng.exponential(self.burst_secs);
            self.next_burst = self.burst_until + self.rng.exponential(self.burst_every_secs);
        }
        let bursting = t < self.burst_until;
        let day = ((t + self.phase) / 86_400.0 * std::f64::consts::TAU).sin();
        let rate = self.rate * (1.0 + self.daily_rate * day) * if bursting { self.burst_mult } else { 1.0 };
        let lat_mult =
            self.latency_step * (1.0 + self.daily_latency * day) * if bursting { self.burst_slowdown } else { 1.0 };
        let n = self.rng.poisson(rate);
        for _ in 0..n {
            let at_ms = sec * 1000 + (self.rng.uniform() * 999.0) as u64;
            let latency_us = self.latency_us(lat_mult);
            if self.rng.uniform() < self.error_p {
                out.push(CallEvent {
                    op: self.op,
                    at_ms,
                    latency_us,
                    class: CallClass::UserError,
                    response_bytes: 200,
                });
                if self.rng.uniform() < self.retry_p {
                    let at_ms = (at_ms + 1).min(sec * 1000 + 999);
                    out.push(CallEvent {
                        op: self.op,
                        at_ms,
                        latency_us,
                        class: CallClass::UserError,
                        response_bytes: 200,
                    });
                }
            } else {
                out.push(CallEvent { op: self.op, at_ms, latency_us, class: CallClass::Ok, response_bytes: 2000 });
            }
        }
    }
}

/// A detector driven by simulated tools, ticking every 5 s like the embedder would, with an
/// optional generator of signal snapshots.
pub struct Scene {
    pub detector: super::Detector,
    pub tools: Vec<Traffic>,
    /// Current unix second.
    pub sec: u64,
    pub transitions: Vec<(u64, super::Transition)>,
    pub changed: Vec<super::Incident>,
    signals: Option<SignalFn>,
    buf: Vec<CallEvent>,
}

/// Builds the snapshot at a tick: (unix seconds, rng) → values.
pub type SignalFn = Box<dyn FnMut(u64, &mut SplitMix64) -> super::SignalSnapshot>;

/// Tick period, seconds.
pub const TICK_SECS: u64 = 5;

impl Scene {
    pub fn new(cfg: super::DetectConfig, model: super::CauseModel, tools: Vec<Traffic>, start_sec: u64) -> Self {
        let names: Vec<String> = (0..tools.len()).map(|i| format!("tool{i}")).collect();
        let detector = super::Detector::new(cfg, model, &names).expect("valid test detector");
        Self {
            detector,
            tools,
            sec: start_sec,
            transitions: Vec::new(),
            changed: Vec::new(),
            signals: None,
            buf: Vec::new(),
        }
    }

    pub fn with_signals(mut self, f: SignalFn) -> Self {
        self.signals = Some(f);
        self
    }

    /// Runs `secs` seconds of traffic, ticking every `TICK_SECS` (2.5 s into each period, so a
    /// window is judged 2.5 s after it ends).
    pub fn run(&mut self, secs: u64, rng: &mut SplitMix64) {
        for _ in 0..secs {
            self.buf.clear();
            for t in &mut self.tools {
                t.second(self.sec, &mut self.buf);
            }
            self.buf.sort_by_key(|e| e.at_ms);
            self.detector.record(&self.buf);
            self.sec += 1;
            if self.sec.is_multiple_of(TICK_SECS) {
                let now_ms = self.sec * 1000 + 2500;
                let snap = match &mut self.signals {
                    Some(f) => f(self.sec, rng),
                    None => super::SignalSnapshot::default(),
                };
                let out = self.detector.tick(now_ms, &snap);
                self.transitions.extend(out.transitions.into_iter().map(|t| (now_ms, t)));
                self.changed.extend(out.changed);
            }
        }
    }
}

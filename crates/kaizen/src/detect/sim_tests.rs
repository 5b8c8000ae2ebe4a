//! The detector's error rates, measured by seeded simulation: false alarms over long stretches
//! of stationary traffic, and the delay to detect a +50 % latency step and an error ratio going
//! from 0.1 % to 5 %, per volume and latency shape. The test fails if they regress past the
//! bars; the figures are in `docs/detection.md`. Rerun (and print the table) with
//! `cargo test -p kaizen --release detect::sim_tests -- --nocapture`.

use super::Signal;
use super::Transition;
use super::config::DetectConfig;
use super::scenario_tests::gemba_like_model;
use super::sim::{MODERATE, Scene, Shape, SplitMix64, Traffic, WIDE};

const START: u64 = 1_700_000_000;
/// Windows of stationary traffic per tool (20,000 × 10 s ≈ 55 h, two daily cycles).
const FA_WINDOWS: u64 = 20_000;
/// Steps per delay measurement.
const EPISODES: u32 = 100;
/// Window at which a delay is given up (counted as a miss).
const GIVE_UP: u64 = 30;

const TOOLS: [(f64, Shape); 6] =
    [(2.0, MODERATE), (2.0, WIDE), (10.0, MODERATE), (10.0, WIDE), (50.0, MODERATE), (50.0, WIDE)];

/// Anomalies opened per tool and signal, and incidents, over `FA_WINDOWS` windows.
fn false_alarms(cfg: &DetectConfig, tools: &[(f64, Shape)], seed: u64) -> (Vec<[u64; 2]>, u64) {
    let traffic =
        tools.iter().enumerate().map(|(i, &(rate, shape))| Traffic::new(i, shape, rate, seed + i as u64)).collect();
    let mut scene = Scene::new(cfg.clone(), gemba_like_model(), traffic, START);
    let mut rng = SplitMix64::new(seed);
    scene.run(FA_WINDOWS * 10, &mut rng);
    let mut opens = vec![[0u64; 2]; tools.len()];
    for (_, t) in &scene.transitions {
        if let Transition::AnomalyOpened { tool, signal, .. } = t {
            let i: usize = tool.trim_start_matches("tool").parse().unwrap_or(0);
            opens[i][*signal as usize] += 1;
        }
    }
    (opens, scene.detector.incidents_total())
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    /// Latency × 1.5.
    Latency,
    /// Error ratio 0.1 % → 5 %.
    Errors,
}

#[derive(Debug, Default)]
struct Delays {
    /// Windows from the step to the opening (1 = decided on the first window after the step).
    windows: Vec<u64>,
    misses: u32,
    /// Anomalies of the other signal opened during a step.
    other: u32,
}

impl Delays {
    fn quantile(&self, q: f64) -> u64 {
        let mut d = self.windows.clone();
        d.sort_unstable();
        d.get(((d.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(u64::MAX)
    }
}

/// Detection delay over `EPISODES` steps, each after a normal stretch of 20–40 windows.
fn delays(cfg: &DetectConfig, rate: f64, shape: Shape, step: Step, seed: u64) -> Delays {
    let mut scene = Scene::new(cfg.clone(), gemba_like_model(), vec![Traffic::new(0, shape, rate, seed)], START);
    let mut rng = SplitMix64::new(seed ^ 0x5EED);
    let want = match step {
        Step::Latency => Signal::Latency,
        Step::Errors => Signal::ErrorRatio,
    };
    // Warm-up, long enough at 2 calls/s with the daily trough's pooled windows.
    scene.run(1200, &mut rng);
    let mut out = Delays::default();
    for _ in 0..EPISODES {
        scene.run(10 * (20 + rng.next_u64() % 21), &mut rng);
        scene.transitions.clear();
        let step_ms = scene.sec * 1000;
        match step {
            Step::Latency => scene.tools[0].latency_step = 1.5,
            Step::Errors => scene.tools[0].error_p = 0.05,
        }
        let mut found = None;
        for _ in 0..GIVE_UP {
            scene.run(10, &mut rng);
            for (_, t) in &scene.transitions {
                if let Transition::AnomalyOpened { signal, at_ms, .. } = t {
                    if *signal == want {
                        found = found.or(Some((at_ms - step_ms).div_ceil(10_000)));
                    } else {
                        out.other += 1;
                    }
                }
            }
            scene.transitions.clear();
            if found.is_some() {
                break;
            }
        }
        match found {
            Some(w) => out.windows.push(w),
            None => out.misses += 1,
        }
        scene.tools[0].latency_step = 1.0;
        scene.tools[0].error_p = 0.001;
        // Let the anomaly close before the next step.
        for _ in 0..60 {
            scene.run(10, &mut rng);
            if scene.detector.open_anomalies().is_empty() {
                break;
            }
        }
    }
    out
}

#[test]
fn false_alarm_rate_stays_under_one_per_500_windows_per_tool() {
    let (opens, incidents) = false_alarms(&DetectConfig::default(), &TOOLS, 7);
    println!("| tool | latency alarms | error alarms | per 500 windows |");
    println!("|---|---|---|---|");
    let mut total = 0;
    for (i, &(rate, shape)) in TOOLS.iter().enumerate() {
        let [l, e] = opens[i];
        total += l + e;
        println!("| {rate} calls/s, {} | {l} | {e} | {:.3} |", shape.name, (l + e) as f64 * 500.0 / FA_WINDOWS as f64);
        // The bar: at most 1 per 500 windows per tool; 40 here. Measured: a handful at most.
        assert!(l + e <= FA_WINDOWS / 500, "tool {i}: {l} latency + {e} error alarms in {FA_WINDOWS} windows");
        assert!(l + e <= 8, "regression: tool {i} ({rate}/s {}) had {l} + {e} false alarms (measured ≤ 5)", shape.name);
    }
    println!("total {total} anomalies, {incidents} incidents over {} tool-windows", FA_WINDOWS * TOOLS.len() as u64);
    assert!(total <= 20, "regression: {total} false alarms in all (measured 12)");
}

#[test]
fn detection_delay_for_latency_and_error_steps() {
    let mut failures = Vec::new();
    println!("| volume | shape | step | p50 | p90 | max | misses |");
    println!("|---|---|---|---|---|---|---|");
    for (k, &(rate, shape)) in TOOLS.iter().enumerate() {
        for step in [Step::Latency, Step::Errors] {
            let d = delays(&DetectConfig::default(), rate, shape, step, 11 + k as u64);
            let (p50, p90) = (d.quantile(0.5), d.quantile(0.9));
            println!(
                "| {rate} calls/s | {} | {} | {p50} | {p90} | {} | {} |",
                shape.name,
                if step == Step::Latency { "latency +50 %" } else { "errors 0.1 % → 5 %" },
                d.quantile(1.0),
                d.misses
            );
            if d.other > 0 {
                failures.push(format!("{rate}/s {} {step:?}: the other signal alarmed {} times", shape.name, d.other));
            }
            // The bar: detected within 3 windows (p90) from 10 calls/s on, any shape.
            if rate >= 10.0 && (p90 > 3 || d.misses > 0) {
                failures.push(format!("{rate}/s {} {step:?}: p90 {p90}, misses {}", shape.name, d.misses));
            }
            // At 2 calls/s (20 calls a window) the information is thin: see the docs.
            let bar = if shape.name == "moderate" { 4 } else { 6 };
            if rate < 10.0 && p50 > bar {
                failures.push(format!("{rate}/s {} {step:?}: p50 {p50} (measured ≤ {bar})", shape.name));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
#[ignore = "a measurement, not a check: cargo test -p kaizen --release record_cost -- --ignored --nocapture"]
fn record_cost() {
    let names: Vec<String> = (0..20).map(|i| format!("tool{i}")).collect();
    let d = super::Detector::new(DetectConfig::default(), gemba_like_model(), &names).unwrap();
    let mut rng = SplitMix64::new(1);
    // 10 s of 10,000 calls/s over 20 tools, recorded in batches of 200 (20 ms at that rate).
    let events: Vec<super::CallEvent> = (0..100_000u64)
        .map(|i| super::CallEvent {
            op: (rng.next_u64() % 20) as usize,
            at_ms: START * 1000 + i / 10,
            latency_us: 200 + rng.next_u64() % 5000,
            class: super::CallClass::Ok,
            response_bytes: 1000,
        })
        .collect();
    let t = std::time::Instant::now();
    for batch in events.chunks(200) {
        d.record(batch);
    }
    let per_event = t.elapsed().as_nanos() as f64 / events.len() as f64;
    let t = std::time::Instant::now();
    let out = d.tick(START * 1000 + 12_000, &super::SignalSnapshot::default());
    println!(
        "record: {per_event:.0} ns per call; tick over 20 tools: {:?} ({} transitions)",
        t.elapsed(),
        out.transitions.len()
    );
}

/// Tuning aid: the figures for settings from the environment (`DETECT_<FIELD>=value` for the
/// numeric fields of `DetectConfig`, e.g. `DETECT_LATENCY_H=4.5`), at 2 calls/s and 10 calls/s.
#[test]
#[ignore = "tuning aid: DETECT_LATENCY_H=4.5 cargo test -p kaizen --release tune -- --ignored --nocapture"]
fn tune() {
    let mut cfg = serde_json::to_value(DetectConfig::default()).unwrap();
    for (k, v) in std::env::vars() {
        if let (Some(field), Ok(v)) = (k.strip_prefix("DETECT_"), v.parse::<f64>()) {
            cfg[field.to_lowercase()] = serde_json::json!(v);
        }
    }
    let cfg: DetectConfig = serde_json::from_value(cfg).unwrap();
    let tools = [TOOLS[0], TOOLS[1], TOOLS[2], TOOLS[3]];
    let (opens, _) = false_alarms(&cfg, &tools, 7);
    for (i, &(rate, shape)) in tools.iter().enumerate() {
        let d = |step| delays(&cfg, rate, shape, step, 11 + i as u64);
        let (l, e) = (d(Step::Latency), d(Step::Errors));
        println!(
            "{rate}/s {}: false alarms {:?}; latency p50 {} p90 {} misses {}; errors p50 {} p90 {} misses {}",
            shape.name,
            opens[i],
            l.quantile(0.5),
            l.quantile(0.9),
            l.misses,
            e.quantile(0.5),
            e.quantile(0.9),
            e.misses
        );
    }
}

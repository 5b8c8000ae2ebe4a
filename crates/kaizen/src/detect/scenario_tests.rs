//! Incidents end to end: a detector fed simulated tools and Gemba-like signals, with trouble
//! injected from outside (a cache too small, a burst of heavy calls, a config change, nothing
//! visible), and grouping of overlapping symptoms into one incident.

use super::causes::{CauseModel, CauseRule, Direction, SignalKind};
use super::config::DetectConfig;
use super::sim::{MODERATE, Scene, SplitMix64, Traffic, WIDE};
use super::{AlertTransition, SignalSnapshot, Transition};

const START: u64 = 1_700_000_000;
/// Warm traffic before the trouble: 10 minutes (baselines learn in 5).
const WARM: u64 = 600;

/// The rules Gemba is expected to supply (also in `docs/detection.md`).
pub fn gemba_like_model() -> CauseModel {
    use Direction::{Down, Up};
    use SignalKind::{Counter, CounterRatio, Event, Gauge, GaugeRatio};
    let r = CauseRule::new;
    CauseModel {
        rules: vec![
            r("cache_thrash", "cache_hit_ratio", Down, Gauge, 1.0, 0.05).threshold(0.5),
            r("cache_thrash", "cache_evictions", Up, Counter, 1.0, 0.2),
            r("cache_thrash", "cache_loads", Up, Counter, 0.7, 0.2),
            r("slow_load", "load_seconds_sum", Up, CounterRatio, 0.9, 0.05).per("cache_loads"),
            r("saturation", "queue_wait_seconds", Up, Gauge, 0.9, 0.05).threshold(0.5),
            r("saturation", "refusals", Up, Counter, 0.95, 0.1),
            r("saturation", "calls.share.refused", Up, Gauge, 0.95, 0.02),
            r("saturation", "inflight", Up, Gauge, 0.6, 2.0),
            r("saturation", "cpu_seconds", Up, Counter, 0.5, 0.25),
            r("large_responses", "calls.response_bytes_mean", Up, Gauge, 0.7, 20_000.0),
            r("recalc_backend", "backend_breaker_open", Up, Gauge, 1.0, 0.5),
            r("recalc_backend", "backend_retries", Up, Counter, 0.8, 0.05),
            r("recalc_backend", "backend_long_runs", Up, Gauge, 0.8, 0.5),
            r("recalc_backend", "breaker_opened", Up, Event, 0.9, 0.0),
            r("file_changed", "files_changed", Up, Counter, 0.8, 0.05),
            r("file_changed", "file_changed", Up, Event, 0.7, 0.0),
            r("config_change", "config_change", Up, Event, 0.9, 0.0),
            r("memory_pressure", "rss_bytes", Up, GaugeRatio, 1.0, 0.1).per("memory_limit_bytes").threshold(0.9),
            r("user_errors", "calls.share.user_error", Up, Gauge, 1.0, 0.02),
            r("data_errors", "calls.share.data_error", Up, Gauge, 1.0, 0.02),
        ],
    }
}

/// What the trouble does to the server's signals.
#[derive(Debug, Clone, Copy, Default)]
struct Trouble {
    thrash: bool,
    saturate: bool,
}

/// Gemba-like signals with realistic noise; `trouble_at` switches them to `trouble`.
fn signals(trouble_at: u64, trouble: Trouble) -> super::sim::SignalFn {
    let (mut evictions, mut loads, mut load_secs, mut refusals, mut cpu) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let mut last = None::<u64>;
    Box::new(move |sec, rng: &mut SplitMix64| {
        let dt = last.map_or(5.0, |l| (sec - l) as f64);
        last = Some(sec);
        let on = sec >= trouble_at;
        let thrash = on && trouble.thrash;
        let sat = on && trouble.saturate;
        let ev_rate = if thrash { 4.0 } else { 0.01 };
        let load_rate = if thrash { 4.2 } else { 0.05 };
        evictions += rng.poisson(ev_rate * dt) as f64;
        let new_loads = rng.poisson(load_rate * dt) as f64;
        loads += new_loads;
        load_secs += new_loads * 0.05 * (0.6 + 0.8 * rng.uniform());
        refusals += rng.poisson(if sat { 2.0 } else { 0.0 } * dt) as f64;
        let cores = if sat {
            1.9
        } else if thrash {
            0.7
        } else {
            0.3
        };
        cpu += dt * (cores + 0.05 * rng.normal()).max(0.0);
        let hit = if thrash { 0.3 + 0.05 * rng.normal() } else { 0.95 + 0.01 * rng.normal() };
        let inflight = if sat { 12.0 + 2.0 * rng.normal() } else { rng.poisson(1.5) as f64 };
        let queue = if sat { 0.4 + 0.05 * rng.normal() } else { 0.001 * rng.uniform() };
        SignalSnapshot::of([
            ("cache_hit_ratio", hit.clamp(0.0, 1.0)),
            ("cache_evictions", evictions),
            ("cache_loads", loads),
            ("load_seconds_sum", load_secs),
            ("inflight", inflight.max(0.0)),
            ("queue_wait_seconds", queue.max(0.0)),
            ("refusals", refusals),
            ("cpu_seconds", cpu),
            ("rss_bytes", 300e6 + 5e6 * rng.normal()),
            ("memory_limit_bytes", 2e9),
            ("backend_breaker_open", 0.0),
            ("backend_retries", 0.0),
            ("backend_long_runs", 0.0),
            ("files_changed", 0.0),
        ])
    })
}

fn two_tools(seed: u64) -> Vec<Traffic> {
    vec![Traffic::new(0, MODERATE, 10.0, seed), Traffic::new(1, WIDE, 4.0, seed + 1)]
}

fn incident_transitions(scene: &Scene) -> Vec<&Transition> {
    scene.transitions.iter().map(|(_, t)| t).filter(|t| t.is_incident()).collect()
}

/// Runs warm traffic, then `trouble` with latency × `slowdown` on every tool, for 3 minutes;
/// returns the scene.
fn inject(seed: u64, slowdown: f64, trouble: Trouble, event: Option<(&str, &str)>) -> Scene {
    let mut rng = SplitMix64::new(seed);
    let at = START + WARM;
    let mut scene = Scene::new(DetectConfig::default(), gemba_like_model(), two_tools(seed), START)
        .with_signals(signals(at, trouble));
    scene.run(WARM, &mut rng);
    assert!(incident_transitions(&scene).is_empty(), "no incident before the trouble: {:?}", scene.transitions);
    if let Some((signal, detail)) = event {
        scene.detector.note_event(at * 1000, signal, detail);
    }
    for t in &mut scene.tools {
        t.latency_step = slowdown;
    }
    scene.run(180, &mut rng);
    scene
}

/// The incident opened for the injected trouble: asserts it opened within 2 minutes of the
/// symptom and returns it as it stands.
fn the_incident(scene: &Scene) -> super::Incident {
    let opened: Vec<_> =
        incident_transitions(scene).into_iter().filter(|t| matches!(t, Transition::IncidentOpened { .. })).collect();
    assert_eq!(opened.len(), 1, "one incident: {opened:?}");
    let inc = scene.detector.open_incident().expect("still open during the trouble");
    let symptom_ms = (START + WARM) * 1000;
    assert!(inc.opened_ms >= symptom_ms, "opened {} before the symptom", inc.opened_ms);
    assert!(
        inc.opened_ms - symptom_ms <= 120_000,
        "opened {} s after the symptom",
        (inc.opened_ms - symptom_ms) / 1000
    );
    assert!(inc.timeline.windows(2).all(|w| w[0].at_ms <= w[1].at_ms), "timeline in order: {:#?}", inc.timeline);
    assert_eq!(inc.tools, ["tool0", "tool1"]);
    let scores: Vec<f64> = inc.causes.iter().map(|c| c.score).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "causes sorted by score: {scores:?}");
    inc
}

#[test]
fn cache_thrash_is_ranked_first_when_hit_ratio_drops_and_evictions_rise() {
    for seed in [1, 2, 3] {
        let scene = inject(seed, 5.0, Trouble { thrash: true, ..Trouble::default() }, None);
        let inc = the_incident(&scene);
        let top = &inc.causes[0];
        assert_eq!(top.cause, "cache_thrash", "seed {seed}: {:#?}", inc.causes);
        assert!(top.score > 0.8, "{top:?}");
        assert!(
            top.evidence.contains("cache_hit_ratio 0.95 → 0.") && top.evidence.contains("(past 0.5)"),
            "{}",
            top.evidence
        );
        assert!(!top.evidence.contains("after the symptom"), "{}", top.evidence);
        assert!(top.evidence.contains("cache_evictions"), "{}", top.evidence);
        // The timeline shows the symptom and the signals as they moved.
        let signals: Vec<&str> = inc.timeline.iter().map(|e| e.signal.as_str()).collect();
        assert!(signals.contains(&"tool0/latency") && signals.contains(&"cache_hit_ratio"), "{signals:?}");
        // The delivered message carries the top cause.
        let msg = incident_transitions(&scene)[0].message();
        assert!(msg.contains("opened (tool0") && msg.contains("likely cache_thrash"), "{msg}");
    }
}

#[test]
fn saturation_is_ranked_first_when_inflight_queue_and_refusals_rise() {
    for seed in [4, 5, 6] {
        let scene = inject(seed, 3.0, Trouble { saturate: true, ..Trouble::default() }, None);
        let inc = the_incident(&scene);
        assert_eq!(inc.causes[0].cause, "saturation", "seed {seed}: {:#?}", inc.causes);
        assert!(inc.causes.iter().all(|c| c.cause != "cache_thrash"), "{:#?}", inc.causes);
        assert!(inc.causes[0].evidence.contains("refusals"), "{}", inc.causes[0].evidence);
    }
}

#[test]
fn unknown_when_nothing_watched_moved() {
    let scene = inject(7, 3.0, Trouble::default(), None);
    let inc = the_incident(&scene);
    assert_eq!(inc.causes[0].cause, "unknown", "{:#?}", inc.causes);
    assert!(inc.causes[0].score >= 0.75, "{:?}", inc.causes[0]);
    assert!(inc.causes[0].evidence.contains("20 rules checked"), "{}", inc.causes[0].evidence);
}

#[test]
fn a_config_change_at_onset_is_the_cause() {
    let scene = inject(8, 2.0, Trouble::default(), Some(("config_change", "version 0.1.0 → 0.2.0")));
    let inc = the_incident(&scene);
    assert_eq!(inc.causes[0].cause, "config_change", "{:#?}", inc.causes);
    assert!(inc.causes[0].evidence.contains("version 0.1.0 → 0.2.0"));
    assert!(inc.timeline.iter().any(|e| e.signal == "config_change"), "the event is on the timeline");
}

#[test]
fn overlapping_anomalies_and_an_alert_make_one_incident() {
    let mut rng = SplitMix64::new(9);
    let mut scene = Scene::new(DetectConfig::default(), gemba_like_model(), two_tools(9), START);
    scene.run(WARM, &mut rng);
    let t0 = START + WARM;
    scene.tools[0].latency_step = 4.0;
    scene.run(20, &mut rng);
    scene.tools[1].error_p = 0.2;
    scene.run(10, &mut rng);
    let alert = |firing: bool, at: u64| AlertTransition {
        name: "GembaSLOBurnRatePage".into(),
        tool: "tool0".into(),
        firing,
        at_ms: at * 1000,
        detail: "latency SLO burning 14.4x".into(),
    };
    scene.detector.alert(alert(true, t0 + 30));
    scene.run(120, &mut rng);
    scene.tools[0].latency_step = 1.0;
    scene.tools[1].error_p = 0.001;
    scene.run(30, &mut rng);
    scene.detector.alert(alert(false, t0 + 190));
    scene.run(200, &mut rng);

    let incidents = incident_transitions(&scene);
    let opened = incidents.iter().filter(|t| matches!(t, Transition::IncidentOpened { .. })).count();
    let closed = incidents.iter().filter(|t| matches!(t, Transition::IncidentClosed { .. })).count();
    assert_eq!((opened, closed), (1, 1), "{incidents:#?}");
    let all = scene.detector.incidents(0);
    assert_eq!(all.len(), 1);
    let inc = &all[0];
    assert_eq!(inc.tools, ["tool0", "tool1"]);
    let closed_ms = inc.closed_ms.expect("closed");
    assert!(closed_ms >= (t0 + 190) * 1000, "closes after its last member");
    // The timeline, in order: tool0 slow, tool1 failing, the alert, then the ends.
    let order: Vec<&str> = inc.timeline.iter().map(|e| e.signal.as_str()).collect();
    let pos = |s: &str| order.iter().position(|x| *x == s).unwrap_or_else(|| panic!("{s} missing from {order:?}"));
    assert!(pos("tool0/latency") < pos("tool1/error_ratio"), "{order:?}");
    assert!(pos("tool1/error_ratio") < pos("alert:GembaSLOBurnRatePage"), "{order:?}");
    assert!(inc.timeline.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    let alert_lines: Vec<&str> =
        inc.timeline.iter().filter(|e| e.signal.starts_with("alert:")).map(|e| e.detail.as_str()).collect();
    assert_eq!(alert_lines.len(), 2, "fired and resolved: {alert_lines:?}");
    assert!(alert_lines[0].starts_with("firing") && alert_lines[1].starts_with("resolved"));
    // Every change was handed over for saving, the last one closed.
    assert_eq!(scene.changed.last().and_then(|i| i.closed_ms), Some(closed_ms));
    // JSON contract.
    let json = scene.detector.incidents_json(0);
    let i0 = &json["incidents"][0];
    for key in ["id", "opened", "closed", "tools", "timeline", "causes"] {
        assert!(i0.get(key).is_some(), "{key} missing in {i0}");
    }
    assert!(i0["timeline"][0].get("at").is_some() && i0["causes"][0].get("evidence").is_some());
}

#[test]
fn steady_traffic_for_30_minutes_opens_nothing() {
    let mut rng = SplitMix64::new(10);
    let tools = vec![
        Traffic::new(0, MODERATE, 1.0, 100),
        Traffic::new(1, MODERATE, 3.0, 101),
        Traffic::new(2, WIDE, 2.0, 102),
        Traffic::new(3, WIDE, 8.0, 103),
        Traffic::new(4, MODERATE, 25.0, 104),
    ];
    let mut scene = Scene::new(DetectConfig::default(), gemba_like_model(), tools, START)
        .with_signals(signals(u64::MAX, Trouble::default()));
    scene.run(WARM + 1800, &mut rng);
    assert!(scene.transitions.is_empty(), "{:#?}", scene.transitions);
    assert_eq!(scene.detector.incidents_total(), 0);
    assert!(scene.detector.anomaly_states().iter().all(|s| !s.open && !s.warming));
}

#[test]
fn a_quiet_tool_never_alarms_on_a_few_calls() {
    let mut rng = SplitMix64::new(11);
    // Three calls a minute, then a hundred times slower and all failing.
    let mut t = Traffic::new(0, MODERATE, 0.05, 11);
    t.burst_mult = 1.0;
    let mut scene = Scene::new(DetectConfig::default(), gemba_like_model(), vec![t], START);
    scene.run(3600, &mut rng);
    scene.tools[0].latency_step = 100.0;
    scene.tools[0].error_p = 1.0;
    scene.run(1800, &mut rng);
    assert!(scene.transitions.is_empty(), "{:#?}", scene.transitions);
}

#[test]
fn a_cold_start_after_a_long_idle_gap_is_not_an_incident_but_a_lasting_slowdown_is() {
    let mut rng = SplitMix64::new(12);
    let mut scene =
        Scene::new(DetectConfig::default(), gemba_like_model(), vec![Traffic::new(0, MODERATE, 10.0, 12)], START);
    scene.run(WARM, &mut rng);
    let rate = scene.tools[0].rate;
    scene.tools[0].rate = 0.0;
    scene.run(7200, &mut rng);
    // The first 20 s after two idle hours are cold (3× slower): not an anomaly.
    scene.tools[0].rate = rate;
    scene.tools[0].latency_step = 3.0;
    scene.run(20, &mut rng);
    scene.tools[0].latency_step = 1.0;
    scene.run(300, &mut rng);
    assert!(scene.transitions.is_empty(), "{:#?}", scene.transitions);
    // A slowdown that lasts is still found.
    scene.tools[0].latency_step = 3.0;
    scene.run(60, &mut rng);
    assert!(
        scene.transitions.iter().any(|(_, t)| matches!(t, Transition::AnomalyOpened { .. })),
        "{:#?}",
        scene.transitions
    );
}

#[test]
fn restore_closes_incidents_left_open_and_lists_them() {
    let d = super::Detector::new(DetectConfig::default(), gemba_like_model(), &["a".to_string()]).unwrap();
    let left_open = super::Incident {
        id: "inc-1000".into(),
        opened_ms: 1000,
        closed_ms: None,
        tools: vec!["a".into()],
        timeline: vec![super::TimelineEntry { at_ms: 5000, signal: "a/latency".into(), detail: "rose".into() }],
        causes: Vec::new(),
    };
    let fixed = d.restore(vec![left_open]);
    assert_eq!(fixed.len(), 1);
    assert_eq!(fixed[0].closed_ms, Some(5000));
    assert_eq!(d.incidents(0), fixed);
    assert_eq!(d.incidents_total(), 0, "restored incidents are not new ones");
}

#[test]
fn after_a_restart_the_saved_baseline_finds_a_regression_and_not_a_cold_start() {
    let dir = std::env::temp_dir().join(format!("kaizen-detect-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("gemba.db");
    let _ = std::fs::remove_file(&db);

    // First run: learns, saves its baselines at shutdown.
    let mut rng = SplitMix64::new(13);
    let mut first = Scene::new(DetectConfig::default(), gemba_like_model(), two_tools(13), START);
    first.run(WARM, &mut rng);
    let mut store = super::IncidentStore::open(&db).unwrap();
    store.save_baselines(&first.detector.baselines(first.sec * 1000)).unwrap();
    let restart = first.sec + 60;
    let saved = store.load_baselines(restart * 1000, 24 * 3600 * 1000).unwrap();
    assert_eq!(saved.len(), 2);
    assert!(store.load_baselines(restart * 1000 + 2 * 86_400_000, 86_400_000).unwrap().is_empty(), "too old");

    // Second run, same code: the first 40 s are cold (3× slower), then normal. Nothing opens.
    let mut cold = Scene::new(DetectConfig::default(), gemba_like_model(), two_tools(14), restart);
    assert_eq!(cold.detector.restore_baselines(&saved), 2);
    assert!(cold.detector.anomaly_states().iter().all(|s| !s.warming), "no five-minute warm-up after a restart");
    for t in &mut cold.tools {
        t.latency_step = 3.0;
    }
    cold.run(40, &mut rng);
    for t in &mut cold.tools {
        t.latency_step = 1.0;
    }
    cold.run(300, &mut rng);
    assert!(cold.transitions.is_empty(), "{:#?}", cold.transitions);

    // Third run, a new version that is twice as slow: found within 2 minutes, blamed on it.
    let mut slow = Scene::new(DetectConfig::default(), gemba_like_model(), two_tools(15), restart);
    slow.detector.restore_baselines(&saved);
    slow.detector.note_event(restart * 1000, "config_change", "version 0.1.0 → 0.2.0");
    for t in &mut slow.tools {
        t.latency_step = 2.0;
    }
    slow.run(120, &mut rng);
    let inc = slow.detector.open_incident().expect("the regression opens an incident");
    assert!(inc.opened_ms <= (restart + 120) * 1000);
    assert_eq!(inc.causes[0].cause, "config_change", "{:#?}", inc.causes);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_call_from_the_far_future_does_not_stall_detection() {
    let mut rng = SplitMix64::new(16);
    let mut scene =
        Scene::new(DetectConfig::default(), gemba_like_model(), vec![Traffic::new(0, MODERATE, 10.0, 16)], START);
    scene.run(WARM, &mut rng);
    let bogus = super::CallEvent {
        op: 0,
        at_ms: (START + 86_400 * 365) * 1000,
        latency_us: 1000,
        class: super::CallClass::Ok,
        response_bytes: 0,
    };
    let unknown = super::CallEvent { op: 7, ..bogus };
    scene.detector.record(&[bogus, unknown]);
    scene.tools[0].latency_step = 3.0;
    scene.run(60, &mut rng);
    assert!(scene.detector.open_incident().is_some(), "still judged: {:#?}", scene.transitions);
    let d = scene.detector.dropped();
    assert_eq!((d.future_calls, d.unknown_op_calls, d.alerts), (1, 1, 0));
}

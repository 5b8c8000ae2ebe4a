//! SLO compliance over a period, from the SLI minutes the SLI engine saved: per objective the
//! SLI (good / total), the objective, and the error budget left.

use std::collections::BTreeMap;

use serde::Serialize;

/// One objective's compliance in the period.
#[derive(Debug, Clone, Serialize)]
pub struct SloLine {
    pub slo: String,
    /// good / total; absent without traffic.
    pub sli: Option<f64>,
    /// The target share of good requests; absent for an objective the caller did not name.
    pub objective: Option<f64>,
    /// 1 − (1 − sli) / (1 − objective), clamped to [0, 1]: the share of the period's error
    /// budget not spent.
    pub budget_remaining: Option<f64>,
    /// (1 − sli) / (1 − objective), not clamped: above 1 the budget is overspent.
    pub budget_consumed: Option<f64>,
    pub good: u64,
    pub total: u64,
    /// The SLI per day, for the compliance chart.
    pub daily: Vec<DailySli>,
}

/// An objective's SLI on one day.
#[derive(Debug, Clone, Serialize)]
pub struct DailySli {
    pub day: String,
    pub sli: f64,
    pub total: u64,
}

/// The budget consumed and remaining for `sli` against `objective`.
pub(crate) fn budget(sli: f64, objective: f64) -> (f64, f64) {
    let allowed = 1.0 - objective;
    let spent = 1.0 - sli;
    let consumed =
        if allowed <= 0.0 { if spent <= 0.0 { 0.0 } else { f64::INFINITY } } else { spent.max(0.0) / allowed };
    let remaining = (1.0 - consumed).clamp(0.0, 1.0);
    (if consumed.is_finite() { consumed } else { f64::MAX }, remaining)
}

/// Lines for every named objective and every objective with minutes in the period, the least
/// budget left first. `minutes` are (slo, minute index, good, total); a minute index counts
/// `resolution_secs` intervals since the epoch.
pub(crate) fn section(
    minutes: &[(String, i64, u64, u64)],
    objectives: &[(String, f64)],
    resolution_secs: u64,
) -> Vec<SloLine> {
    /// Good and total over the period, and per day.
    type Counts = (u64, u64, BTreeMap<i64, (u64, u64)>);
    let mut by: BTreeMap<&str, Counts> = BTreeMap::new();
    for (slo, minute, good, total) in minutes {
        let e = by.entry(slo.as_str()).or_default();
        let good = (*good).min(*total);
        e.0 += good;
        e.1 += total;
        let day = minute.saturating_mul(resolution_secs.max(1) as i64).div_euclid(86_400);
        let d = e.2.entry(day).or_default();
        d.0 += good;
        d.1 += total;
    }
    for (name, _) in objectives {
        by.entry(name.as_str()).or_default();
    }
    let mut out: Vec<SloLine> = by
        .into_iter()
        .map(|(slo, (good, total, days))| {
            let sli = (total > 0).then(|| good as f64 / total as f64);
            let objective = objectives.iter().find(|(n, _)| n == slo).map(|(_, o)| *o);
            let b = match (sli, objective) {
                (Some(s), Some(o)) => Some(budget(s, o)),
                _ => None,
            };
            SloLine {
                slo: slo.to_string(),
                sli,
                objective,
                budget_remaining: b.map(|b| b.1),
                budget_consumed: b.map(|b| b.0),
                good,
                total,
                daily: days
                    .into_iter()
                    .filter(|(_, (_, t))| *t > 0)
                    .map(|(d, (g, t))| DailySli { day: super::time::date(d), sli: g as f64 / t as f64, total: t })
                    .collect(),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        let k = |l: &SloLine| l.budget_remaining.unwrap_or(f64::INFINITY);
        k(a).total_cmp(&k(b)).then_with(|| a.slo.cmp(&b.slo))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_clamped_and_overspend_shown() {
        assert_eq!(budget(1.0, 0.99), (0.0, 1.0));
        let (c, r) = budget(0.995, 0.99);
        assert!((c - 0.5).abs() < 1e-9 && (r - 0.5).abs() < 1e-9);
        let (c, r) = budget(0.97, 0.99);
        assert!((c - 3.0).abs() < 1e-9 && r == 0.0);
        assert_eq!(budget(1.0, 1.0), (0.0, 1.0));
        assert_eq!(budget(0.9, 1.0).1, 0.0);
    }

    #[test]
    fn lines_per_objective() {
        let m = vec![("a".to_string(), 10, 99, 100), ("a".to_string(), 11, 100, 100), ("b".to_string(), 10, 5, 5)];
        let s = section(&m, &[("a".into(), 0.999), ("c".into(), 0.99)], 60);
        assert_eq!(s[0].slo, "a");
        assert_eq!(s[0].budget_remaining, Some(0.0));
        assert!((s[0].sli.unwrap() - 0.995).abs() < 1e-12);
        let c = s.iter().find(|l| l.slo == "c").unwrap();
        assert_eq!((c.sli, c.total), (None, 0));
        let b = s.iter().find(|l| l.slo == "b").unwrap();
        assert_eq!((b.objective, b.budget_remaining), (None, None));
        assert_eq!(s[0].daily[0].day, "1970-01-01");
    }
}

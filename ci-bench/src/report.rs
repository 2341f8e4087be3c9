//! Figures, their targets, and the two ways they are printed: a table for
//! people and one `BENCH key=value …` line per figure for scripts.

use std::fmt::Write as _;

/// What a figure must reach to meet its target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    AtMost(f64),
    AtLeast(f64),
}

impl Target {
    pub fn met(self, value: f64) -> bool {
        match self {
            Target::AtMost(limit) => value <= limit,
            Target::AtLeast(limit) => value >= limit,
        }
    }

    fn machine(self) -> String {
        match self {
            Target::AtMost(v) => format!("<={}", number(v)),
            Target::AtLeast(v) => format!(">={}", number(v)),
        }
    }

    fn human(self, unit: &str) -> String {
        match self {
            Target::AtMost(v) => format!("<= {} {unit}", short(v)),
            Target::AtLeast(v) => format!(">= {} {unit}", short(v)),
        }
    }
}

/// The same quantity measured the plain way in the same run.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    pub value: f64,
    pub unit: &'static str,
}

/// One measured figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Stable machine name, `[a-z0-9_]+`.
    pub name: String,
    /// What a person reads in the table.
    pub title: String,
    pub value: f64,
    /// `x` (a ratio), `ms`, `req/s`, `MB`, or `bool` (1 = yes).
    pub unit: &'static str,
    pub baseline: Option<Baseline>,
    pub target: Option<Target>,
    /// Further facts for scripts (sample counts, the other medians, …).
    pub extra: Vec<(String, String)>,
}

impl Figure {
    pub fn new(name: &str, title: &str, value: f64, unit: &'static str) -> Self {
        Figure {
            name: name.to_string(),
            title: title.to_string(),
            value,
            unit,
            baseline: None,
            target: None,
            extra: Vec::new(),
        }
    }

    pub fn baseline(mut self, value: f64, unit: &'static str) -> Self {
        self.baseline = Some(Baseline { value, unit });
        self
    }

    pub fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }

    pub fn extra(mut self, key: &str, value: impl ToString) -> Self {
        self.extra.push((key.to_string(), value.to_string()));
        self
    }

    pub fn met(&self) -> Option<bool> {
        self.target.map(|t| t.met(self.value))
    }

    /// `BENCH name=… value=… unit=… baseline_<unit>=… target=… met=… k=v…`
    pub fn machine_line(&self) -> String {
        let mut line = format!(
            "BENCH name={} value={} unit={}",
            self.name,
            number(self.value),
            unit_key(self.unit)
        );
        if let Some(b) = &self.baseline {
            let _ = write!(line, " baseline_{}={}", unit_key(b.unit), number(b.value));
        }
        match (self.target, self.met()) {
            (Some(t), Some(met)) => {
                let _ = write!(line, " target={} met={met}", t.machine());
            }
            _ => line.push_str(" target=none met=none"),
        }
        for (k, v) in &self.extra {
            let v: String = v
                .chars()
                .map(|c| if c.is_whitespace() { '_' } else { c })
                .collect();
            let _ = write!(line, " {k}={v}");
        }
        line
    }
}

/// Names of units as they appear in machine keys (`req/s` is `rps`).
fn unit_key(unit: &str) -> &str {
    match unit {
        "req/s" => "rps",
        "MB" => "mb",
        other => other,
    }
}

/// Enough digits for a script, no float noise.
fn number(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// Three significant-ish digits for people.
fn short(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn human_value(v: f64, unit: &str) -> String {
    match unit {
        "bool" => if v >= 1.0 { "yes" } else { "no" }.to_string(),
        "x" => format!("{} x", short(v)),
        unit => format!("{} {unit}", short(v)),
    }
}

/// The people's table, in Markdown so it pastes into BENCHMARKS.md as it is.
pub fn table(figures: &[Figure]) -> String {
    let rows: Vec<[String; 5]> = figures
        .iter()
        .map(|f| {
            [
                f.title.clone(),
                human_value(f.value, f.unit),
                f.baseline
                    .as_ref()
                    .map(|b| human_value(b.value, b.unit))
                    .unwrap_or_else(|| "-".to_string()),
                f.target
                    .map(|t| match f.unit {
                        "bool" => "yes".to_string(),
                        unit => t.human(if unit == "x" { "x" } else { unit }),
                    })
                    .unwrap_or_else(|| "-".to_string()),
                match f.met() {
                    Some(true) => "met".to_string(),
                    Some(false) => "MISSED".to_string(),
                    None => "-".to_string(),
                },
            ]
        })
        .collect();
    let header = ["figure", "value", "baseline (same run)", "target", ""];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String; 5]| {
        let mut s = String::from("|");
        for (cell, w) in cells.iter().zip(widths) {
            let pad = w.saturating_sub(cell.chars().count());
            let _ = write!(s, " {cell}{} |", " ".repeat(pad));
        }
        s.push('\n');
        s
    };
    let mut out = line(&header.map(str::to_string));
    out.push_str(&line(&widths.map(|w| "-".repeat(w))));
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_lines_carry_baseline_target_and_verdict() {
        let f = Figure::new("overhead_ratio", "overhead", 1.0849, "x")
            .baseline(812.25, "ms")
            .target(Target::AtMost(1.15))
            .extra("pairs", 10);
        assert_eq!(
            f.machine_line(),
            "BENCH name=overhead_ratio value=1.085 unit=x baseline_ms=812.25 target=<=1.15 met=true pairs=10"
        );
        let g = Figure::new("api_get_job_rps", "rps", 9000.0, "req/s")
            .target(Target::AtLeast(15000.0))
            .extra("note", "two words");
        assert_eq!(
            g.machine_line(),
            "BENCH name=api_get_job_rps value=9000 unit=rps target=>=15000 met=false note=two_words"
        );
        let h = Figure::new("x", "x", 0.0, "ms");
        assert!(h.machine_line().ends_with("target=none met=none"));
    }

    #[test]
    fn tables_align_and_mark_misses() {
        let t = table(&[
            Figure::new("a", "first", 1.5, "x").target(Target::AtMost(1.15)),
            Figure::new("b", "second figure", 12.0, "ms"),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[2].contains("MISSED"));
        assert!(lines
            .iter()
            .all(|l| l.chars().count() == lines[0].chars().count()));
    }
}

//! `cargo xtask chaos`: the reliability suite at full size, and its figures summed.
//!
//! The suite's tests live beside the code they test (every one is named `chaos_*`), and
//! `cargo test` runs them at CI size. Here they run in release with `POOL_CHAOS=full`, one
//! at a time; each prints a `CHAOS <test> key=value ...` line, and this command adds the
//! lines up into the figures the project promises: nothing lost, nothing duplicated, no
//! hang, no orphan, no zombie, no leaked descriptor or segment, no panic on hostile input,
//! no pool broken by a transient start failure.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Figures that must be zero, and the summary line each is reported under.
const MUST_BE_ZERO: [(&str, &str); 11] = [
    ("lost", "tasks lost"),
    ("duplicated", "tasks duplicated"),
    ("wrong", "wrong results"),
    ("hangs", "hangs"),
    ("orphans", "orphans"),
    ("zombies", "zombies"),
    ("fds_leaked", "fds leaked"),
    ("shm_segments_leaked", "shm segments leaked"),
    ("panics", "panics"),
    ("broken_by_transient", "pools broken by transient failures"),
    ("keys_leaked", "cluster keys left in Redis"),
];

pub(crate) fn run(quick: bool) -> Result<(), String> {
    let started = Instant::now();
    let mut command = Command::new(env!("CARGO"));
    command.args([
        "test",
        "--release",
        "--locked",
        "-p",
        "pool-ipc",
        "-p",
        "pool-api",
        "--lib",
        "--test",
        "chaos",
        "--test",
        "hostile",
        "--test",
        "heal",
        "--test",
        "shm_tracking",
        // The cluster pool's kill tests: a worker, a host, Redis, the client.
        "--test",
        "cluster",
        "--",
        "chaos",
        "--nocapture",
        "--test-threads=1",
    ]);
    if !quick {
        command.env(pool_testkit::FULL_ENV, "full");
    }
    println!(
        "reliability suite ({}): cargo {}",
        if quick { "CI size" } else { "full size" },
        command
            .get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let stderr = child.stderr.take().expect("stderr was piped");
    let mut reports = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.map_err(|e| format!("reading the tests' output: {e}"))?;
        eprintln!("{line}");
        if let Some(report) = pool_testkit::parse_report(&line) {
            reports.push(report);
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for cargo: {e}"))?;
    let totals = summarize(&reports);
    println!("\n{}", render(&reports, &totals));
    println!("took {:.0} s", started.elapsed().as_secs_f64());
    if !status.success() {
        return Err("a reliability test failed (see above)".into());
    }
    let bad: Vec<String> = MUST_BE_ZERO
        .iter()
        .filter(|(key, _)| totals.get(*key).copied().unwrap_or(0) > 0)
        .map(|(_, label)| label.to_string())
        .collect();
    if !bad.is_empty() {
        return Err(format!("non-zero: {}", bad.join(", ")));
    }
    Ok(())
}

type Report = (String, Vec<(String, u64)>);

/// Sums each figure over the tests; hostile tests' `inputs` and the storms' kills are also
/// summed under their summary names.
fn summarize(reports: &[Report]) -> BTreeMap<String, u64> {
    let mut totals = BTreeMap::new();
    for (test, figures) in reports {
        for (key, value) in figures {
            *totals.entry(key.clone()).or_default() += value;
            let alias = match key.as_str() {
                "inputs" if test.starts_with("hostile-") => Some("hostile_inputs"),
                "workers_killed" | "workers_stopped" | "holders_killed" | "parents_killed"
                | "consumers_killed" | "producers_killed" => Some("processes_killed"),
                _ => None,
            };
            if let Some(alias) = alias {
                *totals.entry(alias.to_string()).or_default() += value;
            }
        }
    }
    totals
}

fn render(reports: &[Report], totals: &BTreeMap<String, u64>) -> String {
    let mut out = String::from("| test | figures |\n|---|---|\n");
    for (test, figures) in reports {
        let figures: Vec<String> = figures.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("| {test} | {} |\n", figures.join(" ")));
    }
    let get = |key: &str| totals.get(key).copied().unwrap_or(0);
    out.push_str(&format!(
        "\nSummary: tasks run = {}, processes killed or stopped = {}, hostile inputs tried = {}",
        get("tasks"),
        get("processes_killed"),
        get("hostile_inputs"),
    ));
    for (key, label) in MUST_BE_ZERO {
        out.push_str(&format!(", {label} = {}", get(key)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_summed_and_aliased() {
        let reports: Vec<Report> = [
            "CHAOS kill-storm tasks=10 workers_killed=2 lost=0 hangs=0",
            "CHAOS stop-storm tasks=5 workers_stopped=1 hangs=1",
            "CHAOS hostile-stream inputs=7 panics=0",
            "CHAOS leaks cycles=3 fds_leaked=0",
        ]
        .iter()
        .map(|l| pool_testkit::parse_report(l).unwrap())
        .collect();
        let totals = summarize(&reports);
        assert_eq!(totals["tasks"], 15);
        assert_eq!(totals["processes_killed"], 3);
        assert_eq!(totals["hostile_inputs"], 7);
        assert_eq!(totals["hangs"], 1);
        let table = render(&reports, &totals);
        assert!(table.contains("tasks run = 15"), "{table}");
        assert!(table.contains("hangs = 1"), "{table}");
        assert!(
            table.contains("pools broken by transient failures = 0"),
            "{table}"
        );
    }
}

//! Every demo, run through the real `pool` binary, with its output checked against what the
//! seed tutorial prints.

use std::process::Command;

fn demo(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pool"))
        .arg("demo")
        .args(args)
        .output()
        .expect("running pool");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "pool demo {args:?} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn lines_with<'a>(out: &'a str, prefix: &str) -> Vec<&'a str> {
    out.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn apply_async_runs_five_tasks_three_at_a_time() {
    let out = demo(&["apply-async"]);
    assert_eq!(lines_with(&out, "in: python course").len(), 5);
    assert_eq!(lines_with(&out, "out, python course").len(), 5);
    // Three start before any finishes; the fourth only after one finished.
    let events: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("in:") || l.starts_with("out,"))
        .collect();
    assert!(
        events[..3].iter().all(|l| l.starts_with("in:")),
        "{events:?}"
    );
    assert!(events[3].starts_with("out,"), "{events:?}");
}

#[test]
fn process_starts_joins_and_prints_pids() {
    let out = demo(&["process"]);
    for line in [
        "Worker A is starting.",
        "Worker B is exiting.",
        "Process will start.",
        "Process end.",
    ] {
        assert!(out.contains(line), "{line} missing:\n{out}");
    }
    let parent = lines_with(&out, "Parent process ")[0]
        .trim_start_matches("Parent process ")
        .trim_end_matches('.');
    let child_line = lines_with(&out, "Run child process test (")[0];
    assert!(
        !child_line.contains(&format!("({parent})")),
        "the child has its own pid: {child_line}"
    );
    let (start, end) = (
        out.find("Process will start.").unwrap(),
        out.find("Process end.").unwrap(),
    );
    let child_at = out.find("Run child process test").unwrap();
    assert!(start < child_at && child_at < end, "{out}");
}

#[test]
fn pipe_prints_the_list_the_child_sent() {
    assert!(demo(&["pipe"]).lines().any(|l| l == "[42, None, 'hello']"));
}

#[test]
fn lock_lets_ten_processes_print_whole_lines() {
    let out = demo(&["lock"]);
    let mut lines: Vec<&str> = lines_with(&out, "hello world ");
    lines.sort_unstable();
    let mut want: Vec<String> = (0..10).map(|i| format!("hello world {i}")).collect();
    want.sort_unstable();
    assert_eq!(lines, want);
}

#[test]
fn queue_passes_a_b_c_from_writer_to_reader() {
    let out = demo(&["queue"]);
    assert_eq!(
        lines_with(&out, "Put "),
        [
            "Put A to queue...",
            "Put B to queue...",
            "Put C to queue..."
        ]
    );
    assert_eq!(
        lines_with(&out, "Get "),
        [
            "Get A from queue.",
            "Get B from queue.",
            "Get C from queue."
        ]
    );
    // Nothing is got before it is put.
    for value in ["A", "B", "C"] {
        let at = |line: String| out.lines().position(|l| l == line);
        let (put, got) = (
            at(format!("Put {value} to queue...")),
            at(format!("Get {value} from queue.")),
        );
        assert!(put < got, "{out}");
    }
}

#[test]
fn map_prints_workers_and_squares() {
    let out = demo(&["map"]);
    for line in [
        "Worker A is starting.",
        "Worker B is starting.",
        "Worker A is exiting.",
        "Worker B is exiting.",
    ] {
        assert!(out.contains(line), "{line} missing:\n{out}");
    }
    assert_eq!(lines_with(&out, "[1, 4, 9]").len(), 5);
}

#[test]
fn square_sum_is_385_and_scales() {
    assert!(demo(&["square-sum"]).contains("Total square sum: 385"));
    // 1..=1000: n(n+1)(2n+1)/6.
    let out = demo(&["square-sum", "--n", "1000"]);
    assert!(out.contains("Total square sum: 333833500"), "{out}");
    assert!(out.contains("numbers/s"), "{out}");
}

#[test]
fn starmap_copies_every_file() {
    let out = demo(&["starmap"]);
    assert_eq!(lines_with(&out, "Downloaded ").len(), 3, "{out}");
}

#[test]
fn images_are_resized() {
    let out = demo(&["images"]);
    for name in ["image1.png", "image2.png", "image3.png"] {
        assert!(out.contains(&format!("Processed {name}")), "{out}");
    }
}

#[test]
fn initializer_names_workers_and_maxtasksperchild_starts_more() {
    let out = demo(&["initializer"]);
    assert!(out.contains("Inputs  : [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]"));
    assert!(out.contains("Build-In : [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]"));
    assert_eq!(
        lines_with(&out, "Pool  : [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]").len(),
        2
    );
    let (plain, recycled) = out.split_once("-- with maxtasksperchild=2").unwrap();
    let started_plain = lines_with(plain, "Starting PoolWorker-").len();
    let started_recycled = lines_with(recycled, "Starting PoolWorker-").len();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(started_plain, cpus * 2);
    // Ten one-item chunks, two per worker: at least five workers start.
    assert!(started_recycled >= 5, "{recycled}");
}

#[test]
fn results_are_printed_in_order_after_join() {
    let out = demo(&["results"]);
    let done: Vec<&str> = lines_with(&out, "done hello ");
    assert_eq!(
        done,
        (0..10)
            .map(|i| format!("done hello {i}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(lines_with(&out, "hello ").len(), 30);
    assert!(out.contains("Sub-process(es) done."));
}

#[test]
fn callbacks_run_in_the_main_process() {
    let out = demo(&["callback"]);
    let main_pid = lines_with(&out, "main process pid: ")[0]
        .trim_start_matches("main process pid: ")
        .to_string();
    let done = lines_with(&out, "-->exec done: ");
    assert_eq!(done.len(), 13);
    let mut values: Vec<u64> = done[..10]
        .iter()
        .map(|l| l.split_whitespace().nth(2).unwrap().parse().unwrap())
        .collect();
    values.sort_unstable();
    assert_eq!(values, (100..110).collect::<Vec<_>>());
    assert!(
        done.iter()
            .all(|l| l.ends_with(&format!("main process pid: {main_pid}"))),
        "{out}"
    );
    // As CPython prints it: `end` before any callback (the tasks sleep), and every callback
    // of the pool before `join` returns (the serial part comes after).
    let at = |line: &str| out.lines().position(|l| l.trim() == line);
    let first_done = out.lines().position(|l| l.starts_with("-->exec done: "));
    let last_async_done = out
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("-->exec done: "))
        .nth(9)
        .map(|(i, _)| i);
    assert!(at("end").is_some() && at("end") < first_done, "{out}");
    assert!(last_async_done < at("-- serial: apply"), "{out}");
}

#[test]
fn crash_reports_the_lost_worker_and_finishes_the_map() {
    let out = demo(&["crash"]);
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("was lost while running the task (exitcode -6)"))
            .count(),
        2
    );
    assert!(out.contains("19 -> 361"));
    assert!(out.contains("18 results, 2 lost with their worker; the pool goes on: [1, 4, 9]"));
}

#[test]
fn as_completed_reports_each_task_as_it_finishes_failures_included() {
    let out = demo(&["as-completed"]);
    let count = |needle: &str| out.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count("-> task panicked"), 2, "{out}");
    assert_eq!(count("was lost while running the task"), 1, "{out}");
    assert!(out.contains("9 done, 3 failed"), "{out}");
    // Each of the twelve inputs is reported exactly once.
    for x in 1..=12 {
        assert_eq!(
            lines_with(&out, &format!("{x:>2} -> ")).len(),
            1,
            "{x}: {out}"
        );
    }
}

#[test]
fn timeout_kills_the_stuck_task_and_goes_on() {
    let out = demo(&["timeout"]);
    assert_eq!(lines_with(&out, "slept ").len(), 2);
    assert!(out.contains("exceeded its time limit"), "{out}");
}

#[test]
fn list_and_help_name_every_demo_and_unknown_names_fail() {
    let list = demo(&["--list"]);
    let top = String::from_utf8(
        Command::new(env!("CARGO_BIN_EXE_pool"))
            .arg("--help")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let help = String::from_utf8(
        Command::new(env!("CARGO_BIN_EXE_pool"))
            .args(["demo", "--help"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for name in [
        "apply-async",
        "process",
        "queue",
        "pipe",
        "lock",
        "map",
        "square-sum",
        "starmap",
        "images",
        "initializer",
        "results",
        "callback",
        "crash",
        "as-completed",
        "timeout",
    ] {
        assert!(
            list.contains(name) && help.contains(name) && top.contains(name),
            "{name}"
        );
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_pool"))
        .args(["demo", "nope"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

/// `pool demo cluster`: its own redis-server (installed by .ci/run), three `pool worker`
/// hosts, the seed's sum of squares and image batch through them, and a host SIGKILLed
/// mid-run whose chunks finish elsewhere.
#[test]
fn cluster_runs_the_seeds_on_three_hosts_and_survives_a_killed_host() {
    let out = demo(&["cluster"]);
    assert!(out.contains("Total square sum: 385"), "{out}");
    assert_eq!(lines_with(&out, "Processed image").len(), 6, "{out}");
    assert!(
        lines_with(&out, "Processed image")
            .iter()
            .all(|l| l.ends_with("300x300")),
        "{out}"
    );
    let finished = lines_with(&out, "All 24 steps finished");
    assert_eq!(finished.len(), 1, "{out}");
    // The steps that did not run on the killed host ran on the other two.
    assert!(
        finished[0].contains("host1") && finished[0].contains("host3"),
        "{out}"
    );
    assert!(out.contains("Killed host2"), "{out}");
}

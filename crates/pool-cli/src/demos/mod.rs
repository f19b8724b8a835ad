//! The demos: one per example of the seed tutorials, plus what CPython cannot do.
//!
//! Each demo prints what its tutorial prints (pids differ, of course). Sleeps are a tenth of
//! the tutorials' unless `--real-time` is given, so that `pool demo` runs in seconds.

mod cluster;
mod pooled;
mod processes;

pub(crate) use cluster::{WorkerArgs, worker};

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

/// Options shared by the demos.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// The demo to run (all of them, in order, when omitted).
    name: Option<String>,
    /// List the demos and exit.
    #[arg(long)]
    list: bool,
    /// Sleep as long as the tutorials do (by default a tenth of it).
    #[arg(long)]
    real_time: bool,
    /// For `square-sum`: sum the squares of 1..=N instead of the tutorial's ten numbers.
    #[arg(long, value_name = "N")]
    n: Option<u64>,
    /// For `cluster`: use this Redis instead of starting a redis-server of its own.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
}

impl DemoArgs {
    /// A tutorial's sleep, scaled.
    pub(crate) fn sleep(&self, seconds: f64) -> Duration {
        let scale = if self.real_time { 1.0 } else { 0.1 };
        Duration::from_secs_f64(seconds * scale)
    }

    pub(crate) fn n(&self) -> Option<u64> {
        self.n
    }

    pub(crate) fn redis(&self) -> Option<&str> {
        self.redis.as_deref()
    }
}

/// A demo's result: `Err` carries a message for stderr.
pub(crate) type Outcome = Result<(), String>;

struct Demo {
    name: &'static str,
    about: &'static str,
    run: fn(&DemoArgs) -> Outcome,
}

/// Demos run only when named (they need more than this machine's processes).
const NAMED_ONLY: &[Demo] = &[Demo {
    name: "cluster",
    about: "beyond one machine: redis-server and 3 hosts (pool worker); sum of squares and images through them; a host killed mid-run",
    run: cluster::cluster_demo,
}];

const DEMOS: &[Demo] = &[
    Demo {
        name: "apply-async",
        about: "seed 000: Pool(3), five apply_async tasks; three run at once",
        run: pooled::apply_async,
    },
    Demo {
        name: "process",
        about: "seeds 001/002: Process(worker, A) and B started and joined; run_proc('test') with pids",
        run: processes::process,
    },
    Demo {
        name: "map",
        about: "seeds 001/002: Pool(2).map(worker, [A, B]); Pool().map(f, [1, 2, 3]) five times",
        run: pooled::map,
    },
    Demo {
        name: "square-sum",
        about: "seed 001: sum of squares of 1..10 in chunks over 4 processes (--n N for big N)",
        run: pooled::square_sum,
    },
    Demo {
        name: "starmap",
        about: "seed 001: parallel \"downloads\" of local files with starmap(copy, pairs)",
        run: pooled::starmap,
    },
    Demo {
        name: "images",
        about: "seed 001: generate images, resize each to 300x300 in the pool, save processed_<name>",
        run: pooled::images,
    },
    Demo {
        name: "queue",
        about: "seed 002: a writer process puts A, B, C into a Queue; a reader process gets them",
        run: processes::queue,
    },
    Demo {
        name: "pipe",
        about: "seed 002: a child sends [42, None, 'hello'] through a Pipe; the parent prints it",
        run: processes::pipe,
    },
    Demo {
        name: "lock",
        about: "seed 002: ten processes print hello world i under one Lock",
        run: processes::lock,
    },
    Demo {
        name: "initializer",
        about: "seed 003: initializer prints Starting PoolWorker-N; then maxtasksperchild=2",
        run: pooled::initializer,
    },
    Demo {
        name: "results",
        about: "seed 003: Pool(4), ten apply_async, print each get(), then Sub-process(es) done.",
        run: pooled::results,
    },
    Demo {
        name: "callback",
        about: "seed 004: Pool(5), apply_async with a callback run in the main process; then apply",
        run: pooled::callback,
    },
    Demo {
        name: "crash",
        about: "beyond the seeds: a worker killed mid-task fails its task only; the map finishes",
        run: pooled::crash,
    },
    Demo {
        name: "as-completed",
        about: "beyond the seeds: as_completed over a batch with panics and a killed worker",
        run: pooled::as_completed,
    },
    Demo {
        name: "timeout",
        about: "beyond the seeds: a task over its time limit is killed and reported; the pool goes on",
        run: pooled::timeout,
    },
];

/// The list of demos, for `--help`.
pub(crate) fn catalogue() -> String {
    let mut out = String::from("Demos:\n");
    for d in DEMOS.iter().chain(NAMED_ONLY) {
        out.push_str(&format!("  {:<12} {}\n", d.name, d.about));
    }
    out.push_str("\nExamples:\n  pool demo             run every demo\n  pool demo map         run one\n  pool demo square-sum --n 10000000\n  pool demo cluster [--redis URL]   (needs redis-server)\n");
    out
}

/// Runs the demos the arguments ask for.
pub(crate) fn run(args: &DemoArgs) -> ExitCode {
    if args.list {
        print!("{}", catalogue());
        return ExitCode::SUCCESS;
    }
    let chosen: Vec<&Demo> = match &args.name {
        None => DEMOS.iter().collect(),
        Some(name) => match DEMOS.iter().chain(NAMED_ONLY).find(|d| d.name == name) {
            Some(d) => vec![d],
            None => {
                eprintln!("pool: no demo named `{name}`\n\n{}", catalogue());
                return ExitCode::from(2);
            }
        },
    };
    let mut failed = 0;
    for demo in chosen {
        println!("=== {} — {}", demo.name, demo.about);
        if let Err(msg) = (demo.run)(args) {
            eprintln!("pool: demo {} failed: {msg}", demo.name);
            failed += 1;
        }
        println!();
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

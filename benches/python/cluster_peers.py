"""W9's Python peers: Celery 5 (Redis broker and result backend), RQ and Ray's
multiprocessing Pool, each with 2 workers on this machine, on W9's workloads.

Run by `cargo xtask bench` (full mode) with the interpreter of a venv it made under the
target dir; run by hand with any interpreter that has the packages:

    python cluster_peers.py [--quick] [--only celery,rq,ray]

It starts its own redis-server on 127.0.0.1 (a free port, no persistence) and stops it at
the end. A peer whose package is missing is skipped with a line on stderr saying so.
Each figure is printed as one JSON line, as mp_bench.py prints them:

    {"workload": "W9 ...", "variant": "celery", "value": 1.5, "unit": "ms"}

and for each workload a line with variant "best" holds the best peer's figure, with the
peer's name in "peer".

The workloads, as benches/benches/cluster.rs measures them for the cluster pool:
  - apply round trip: median of single calls of a no-op task, each awaited;
  - 10k pipelined: 10,000 no-op tasks submitted without waiting, then all awaited;
  - 1M tiny items: x + 1 over 1M ints with each framework's own chunking: Ray Pool.map's
    default; Celery's `chunks` and RQ (which have no default) with multiprocessing's
    default chunk size (len / (4 * workers));
  - 64 x 1 MiB: 64 bytes objects of 1 MiB echoed back (pickle serializer for Celery);
  - start-up: workers started to the first answer.

Each peer as it runs fastest here: RQ's SimpleWorker (its default worker forks a child per
job), Ray tasks for the pipelined workload (Ray Pool's apply_async is slower).
"""

import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

WORKERS = 2
HERE = os.path.dirname(os.path.abspath(__file__))
URL = os.environ.get("W9_REDIS_URL", "redis://127.0.0.1:6379/0")

# Task bodies, shared by every peer (Celery and RQ import this module in their workers).


def noop():
    return None


def tiny(x):
    return x + 1


def tiny_chunk(xs):
    return [x + 1 for x in xs]


def echo(b):
    return b


# Celery's app, on the Redis of W9_REDIS_URL as it is when this module is imported (its
# workers import it; the client imports it after it started Redis).
app = None
try:
    from celery import Celery
except ImportError:
    Celery = None
if Celery is not None and __name__ != "__main__":
    app = Celery("cluster_peers", broker=URL, backend=URL)
    app.conf.update(
        task_serializer="pickle",
        result_serializer="pickle",
        accept_content=["pickle", "json"],
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    c_noop = app.task(name="w9.noop")(noop)
    c_tiny = app.task(name="w9.tiny")(tiny)
    c_echo = app.task(name="w9.echo")(echo)


def emit(workload, variant, value, unit, **extra):
    line = {"workload": workload, "variant": variant, "value": value, "unit": unit}
    line.update(extra)
    print(json.dumps(line), flush=True)


def note(text):
    print(text, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis():
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="w9-peers-")
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", tmp,
            # Celery's Redis result backend delivers results over pub/sub: 64 results of
            # 1 MiB overrun the default pub/sub output buffer limit (8 MB for 60 s, 32 MB
            # hard), Redis drops the subscriber, and the group's results never arrive.
            "--client-output-buffer-limit", "pubsub 0 0 0",
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def stop(procs):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def sizes(quick):
    return {
        "rt": 50 if quick else 300,
        "pipelined": 1_000 if quick else 10_000,
        "tiny": 100_000 if quick else 1_000_000,
    }


def default_chunksize(n):
    return max(1, math.ceil(n / (WORKERS * 4)))


class Peer:
    """One framework: `start` starts its 2 workers, the methods measure."""

    def __init__(self, quick):
        self.n = sizes(quick)
        self.procs = []

    def run(self):
        figures = {}
        t = time.perf_counter()
        self.start()
        self.apply_noop()
        figures["start_ms"] = (time.perf_counter() - t) * 1e3
        for _ in range(10):
            self.apply_noop()
        samples = []
        for _ in range(self.n["rt"]):
            t = time.perf_counter()
            self.apply_noop()
            samples.append((time.perf_counter() - t) * 1e6)
        figures["rt_us"] = statistics.median(samples)
        t = time.perf_counter()
        self.pipelined(self.n["pipelined"])
        figures["pipelined_per_s"] = self.n["pipelined"] / (time.perf_counter() - t)
        items = list(range(self.n["tiny"]))
        t = time.perf_counter()
        out = self.map_tiny(items)
        figures["tiny_per_s"] = len(items) / (time.perf_counter() - t)
        assert len(out) == len(items) and out[-1] == items[-1] + 1
        payloads = [bytes([7]) * (1 << 20) for _ in range(64)]
        t = time.perf_counter()
        back = self.map_echo(payloads)
        figures["mib_per_s"] = 64 / (time.perf_counter() - t)
        assert len(back) == 64 and all(len(b) == 1 << 20 for b in back)
        return figures

    def close(self):
        stop(self.procs)


class CeleryPeer(Peer):
    name = "celery"

    def start(self):
        # C_FORCE_ROOT: Celery refuses pickle as root otherwise (CI runs as root); pickle
        # because JSON cannot carry the 1 MiB bytes objects.
        env = dict(os.environ, W9_REDIS_URL=URL, PYTHONPATH=HERE, C_FORCE_ROOT="1")
        self.procs.append(
            subprocess.Popen(
                [
                    sys.executable, "-m", "celery", "-A", "cluster_peers", "worker",
                    "--concurrency", str(WORKERS), "--pool", "prefork",
                    "--without-gossip", "--without-mingle", "--without-heartbeat",
                    "--loglevel", "WARNING",
                ],
                env=env,
                cwd=HERE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    def apply_noop(self):
        me.c_noop.delay().get(timeout=120)

    def pipelined(self, n):
        results = [me.c_noop.delay() for _ in range(n)]
        for r in results:
            r.get(timeout=300)

    def map_tiny(self, items):
        size = default_chunksize(len(items))
        result = me.c_tiny.chunks(zip(items), size).apply_async()
        return [x for part in result.get(timeout=600) for x in part]

    def map_echo(self, payloads):
        from celery import group

        return group(me.c_echo.s(b) for b in payloads).apply_async().get(timeout=600)


class RqPeer(Peer):
    name = "rq"

    def start(self):
        import redis
        import rq

        self.conn = redis.Redis.from_url(URL)
        self.queue = rq.Queue("w9", connection=self.conn)
        env = dict(os.environ, PYTHONPATH=HERE)
        for _ in range(WORKERS):
            self.procs.append(
                subprocess.Popen(
                    # SimpleWorker: runs jobs in the worker process. RQ's default forks a
                    # child per job, about 100 ms each here (8 tasks/s): the peer at its best.
                    [
                        sys.executable, "-m", "rq.cli", "worker", "--url", URL, "--quiet",
                        "--worker-class", "rq.worker.SimpleWorker", "w9",
                    ],
                    env=env,
                    cwd=HERE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

    def wait(self, jobs, timeout):
        out = []
        for job in jobs:
            result = job.latest_result(timeout=timeout)
            if result is None or result.type != result.Type.SUCCESSFUL:
                raise RuntimeError(f"rq job {job.id} did not succeed: {result}")
            out.append(result.return_value)
        return out

    def apply_noop(self):
        self.wait([self.queue.enqueue(me.noop)], 120)

    def enqueue_many(self, func, args_list):
        import rq

        data = [rq.Queue.prepare_data(func, args=args) for args in args_list]
        return self.queue.enqueue_many(data)

    def pipelined(self, n):
        self.wait(self.enqueue_many(me.noop, [()] * n), 300)

    def map_tiny(self, items):
        size = default_chunksize(len(items))
        parts = [(items[i : i + size],) for i in range(0, len(items), size)]
        return [x for part in self.wait(self.enqueue_many(me.tiny_chunk, parts), 600) for x in part]

    def map_echo(self, payloads):
        return self.wait(self.enqueue_many(me.echo, [(b,) for b in payloads]), 600)


class RayPeer(Peer):
    name = "ray"

    def start(self):
        import ray
        from ray.util.multiprocessing import Pool

        ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
        self.ray = ray
        self.pool = Pool(WORKERS)
        self.remote_noop = ray.remote(me.noop)

    def apply_noop(self):
        self.pool.apply(me.noop)

    def pipelined(self, n):
        # Ray tasks rather than Pool.apply_async: the faster of the two by far.
        self.ray.get([self.remote_noop.remote() for _ in range(n)])

    def map_tiny(self, items):
        return self.pool.map(me.tiny, items)

    def map_echo(self, payloads):
        return self.pool.map(me.echo, payloads, chunksize=1)

    def close(self):
        self.pool.terminate()
        self.ray.shutdown()


WORKLOADS = [
    ("rt_us", "W9 cluster apply round trip", "us", min),
    ("pipelined_per_s", "W9 cluster 10k apply_async pipelined", "tasks/s", max),
    ("tiny_per_s", "W9 cluster map of 1M tiny items", "items/s", max),
    ("mib_per_s", "W9 cluster map of 64 x 1 MiB", "MiB/s", max),
    ("start_ms", "W9 cluster start-up", "ms", min),
]


def available(name):
    module = {"celery": "celery", "rq": "rq", "ray": "ray.util.multiprocessing"}[name]
    try:
        __import__(module)
        return True
    except Exception as e:  # an install that is there but broken counts as missing
        note(f"{name} skipped: cannot import {module}: {e}")
        return False


# This module as workers import it (`cluster_peers`, not `__main__`): tasks must name
# functions the workers can import.
me = None


def main():
    global URL, me
    quick = "--quick" in sys.argv
    only = None
    if "--only" in sys.argv:
        only = sys.argv[sys.argv.index("--only") + 1].split(",")
    names = [n for n in ("rq", "celery", "ray") if only is None or n in only]
    redis_proc, URL = start_redis()
    os.environ["W9_REDIS_URL"] = URL
    import importlib

    me = importlib.import_module("cluster_peers")
    results = {}
    try:
        for name in names:
            if not available(name):
                continue
            peer = {"celery": CeleryPeer, "rq": RqPeer, "ray": RayPeer}[name](quick)
            try:
                figures = peer.run()
            except Exception as e:
                note(f"{name} failed: {type(e).__name__}: {e}")
                continue
            finally:
                peer.close()
            results[name] = figures
            for key, workload, unit, _ in WORKLOADS:
                emit(workload, name, figures[key], unit)
    finally:
        stop([redis_proc])
    for key, workload, unit, best in WORKLOADS:
        if results:
            peer = best(results, key=lambda n: results[n][key])
            emit(workload, "best", results[peer][key], unit, peer=peer)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()

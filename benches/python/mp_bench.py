"""The benchmark workloads (W1-W8) on CPython's multiprocessing, for `cargo xtask bench`.

Prints one JSON object per line: {"workload": ..., "variant": ..., "value": ..., "unit": ...},
or {"workload": ..., "variant": ..., "skipped": reason} for a figure it chose not to measure.
`--quick` runs smaller counts. The definitions mirror pool's criterion benches, and the
groups w3growth, imap, poolstart and idle mirror `benches/benches/growth.rs`.
"""
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

QUICK = "--quick" in sys.argv


def emit(workload, variant, value, unit):
    print(json.dumps({"workload": workload, "variant": variant, "value": value, "unit": unit}), flush=True)


def skip(workload, variant, reason):
    print(json.dumps({"workload": workload, "variant": variant, "skipped": reason}), flush=True)


def noop(_=None):
    return None


def getpid(_=None):
    return os.getpid()


def square(x):
    return x * x


def length(b):
    return len(b)


def w1_startup(method):
    ctx = mp.get_context(method)
    runs = []
    for _ in range(3 if QUICK else 5):
        t = time.perf_counter()
        with ctx.Pool(2) as pool:
            seen = set()
            while len(seen) < 2:
                seen.update(pool.map(getpid, range(4), chunksize=1))
            pool.close()
            pool.join()
        runs.append(time.perf_counter() - t)
    emit("W1 pool startup", method, statistics.median(runs) * 1e3, "ms")


def w2_apply(pool):
    n = 1000 if QUICK else 10000
    for _ in range(100 if QUICK else 500):
        pool.apply(noop)
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        pool.apply(noop)
        samples.append(time.perf_counter() - t)
    samples.sort()
    emit("W2 apply round trip", "median", samples[len(samples) // 2] * 1e6, "us")
    emit("W2 apply round trip", "p99", samples[int(len(samples) * 0.99)] * 1e6, "us")
    t = time.perf_counter()
    rs = [pool.apply_async(noop) for _ in range(n)]
    for r in rs:
        r.get()
    emit("W2b apply_async pipelined", "", n / (time.perf_counter() - t), "tasks/s")


def w2_executor():
    n = 1000 if QUICK else 10000
    with ProcessPoolExecutor(2) as ex:
        for _ in range(100 if QUICK else 500):
            ex.submit(noop).result()
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            ex.submit(noop).result()
            samples.append(time.perf_counter() - t)
        samples.sort()
        emit("W2 apply round trip", "ProcessPoolExecutor median", samples[len(samples) // 2] * 1e6, "us")
        t = time.perf_counter()
        fs = [ex.submit(noop) for _ in range(n)]
        for f in fs:
            f.result()
        emit("W2b apply_async pipelined", "ProcessPoolExecutor", n / (time.perf_counter() - t), "tasks/s")


def w3_map(pool):
    n = 200_000 if QUICK else 1_000_000
    t = time.perf_counter()
    pool.map(square, range(n))
    emit("W3 map tiny items", "default chunksize", n / (time.perf_counter() - t), "items/s")
    n = 20_000 if QUICK else 100_000
    t = time.perf_counter()
    pool.map(square, range(n), chunksize=1)
    emit("W3 map tiny items", "chunksize 1", n / (time.perf_counter() - t), "items/s")


def w3_executor():
    n = 200_000 if QUICK else 1_000_000
    with ProcessPoolExecutor(2) as ex:
        t = time.perf_counter()
        list(ex.map(square, range(n), chunksize=max(1, n // 8)))
        emit("W3 map tiny items", "ProcessPoolExecutor", n / (time.perf_counter() - t), "items/s")


def w4_payloads(pool):
    buffers = [bytes([i]) * (1 << 20) for i in range(64)]
    for variant, chunksize in (("default chunksize", None), ("chunksize 1", 1)):
        t = time.perf_counter()
        pool.map(length, buffers, chunksize=chunksize)
        emit("W4 map 64 x 1 MiB", variant, 64 / (time.perf_counter() - t), "MiB/s")
    t = time.perf_counter()
    pool.map(echo, buffers)
    emit("W4 map 64 x 1 MiB", "echoed", 64 / (time.perf_counter() - t), "MiB/s")


def pipe_sink(inbox, ack):
    buf = bytearray(64 << 20)
    while True:
        # A forked child holds a copy of the parent's end too, so it would never see EOF:
        # the parent says when to stop.
        request = inbox.recv()
        if request is None:
            return
        count, size = request
        for _ in range(count):
            inbox.recv_bytes_into(buf)
        ack.send(1)


def w5_pipe():
    for variant in ("duplex", "one-way pipe"):
        if variant == "duplex":
            parent, child = mp.Pipe()
            inbox, ack, outbox, acks = child, child, parent, parent
        else:
            inbox, outbox = mp.Pipe(duplex=False)
            acks, ack = mp.Pipe(duplex=False)
        p = mp.Process(target=pipe_sink, args=(inbox, ack))
        p.start()
        for count, size in ((10_000, 1024), (4, 64 << 20)):
            msg = b"x" * size
            t = time.perf_counter()
            outbox.send((count, size))
            for _ in range(count):
                outbox.send_bytes(msg)
            acks.recv()
            secs = time.perf_counter() - t
            if size == 1024:
                emit("W5 Pipe 1 KiB", variant, count / secs, "msgs/s")
            else:
                emit("W5 Pipe 64 MiB", variant, count * 64 / secs, "MiB/s")
        outbox.send(None)
        p.join()


def produce(q, n):
    for i in range(n):
        q.put(i)


def w6_queue():
    n = 50_000 if QUICK else 200_000
    q = mp.Queue()
    p = mp.Process(target=produce, args=(q, n))
    t = time.perf_counter()
    p.start()
    for _ in range(n):
        q.get()
    emit("W6 Queue small items", "", n / (time.perf_counter() - t), "items/s")
    p.join()
    q = mp.SimpleQueue()
    p = mp.Process(target=produce, args=(q, n))
    t = time.perf_counter()
    p.start()
    for _ in range(n):
        q.get()
    emit("W6 Queue small items", "SimpleQueue", n / (time.perf_counter() - t), "items/s")
    p.join()


def increment(lock, counter, n):
    for _ in range(n):
        with lock:
            counter.value += 1


def w7_lock():
    per = 10_000 if QUICK else 50_000
    lock = mp.Lock()
    counter = mp.RawValue("q", 0)
    ps = [mp.Process(target=increment, args=(lock, counter, per)) for _ in range(2)]
    t = time.perf_counter()
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    assert counter.value == 2 * per
    emit("W7 Lock contended by 2 processes", "", 2 * per / (time.perf_counter() - t), "ops/s")


def w8_process(method):
    ctx = mp.get_context(method)
    runs = []
    for _ in range(5 if QUICK else 20):
        t = time.perf_counter()
        p = ctx.Process(target=noop)
        p.start()
        p.join()
        runs.append(time.perf_counter() - t)
    emit("W8 Process start + join", method, statistics.median(runs) * 1e3, "ms")


# What growth.rs divides item counts by under --quick.
SCALE = 10 if QUICK else 1
# Items per imap chunk, as growth.rs has it.
IMAP_CHUNK = 10_000


def mem_available_gib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / (1 << 20)
    return 0.0


def proc_kib(path, field):
    with open(path) as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def w3_growth():
    with mp.get_context("fork").Pool(2) as pool:
        pool.map(square, range(1_000_000 // SCALE))
        for label, n, rounds in (("1M", 1_000_000, 3), ("10M", 10_000_000, 2), ("100M", 100_000_000, 1)):
            n //= SCALE
            if QUICK:
                rounds = 1
            # A list of n results holds ~40 bytes an item (a pointer and an int object):
            # ~4 GB at 100 M, and as much again while map joins the chunks' lists.
            need = n * 80 / (1 << 30) + 1
            if mem_available_gib() < need:
                skip("W3 growth", label, "needs %.0f GiB, %.0f available" % (need, mem_available_gib()))
                continue
            runs = []
            for _ in range(rounds):
                t = time.perf_counter()
                out = pool.map(square, range(n))
                runs.append(time.perf_counter() - t)
                assert len(out) == n
                del out
            emit("W3 growth", label, statistics.median(runs) * 1e9 / n, "ns/item")


def imap_child(n):
    """One imap measurement in a process of its own: items/s and this process's peak RSS."""
    with mp.get_context("fork").Pool(2) as pool:
        t = time.perf_counter()
        count = 0
        for _ in pool.imap(square, range(n), chunksize=IMAP_CHUNK):
            count += 1
        rate = n / (time.perf_counter() - t)
        assert count == n
    print(rate, proc_kib("/proc/self/status", "VmHWM:"), flush=True)


def w_imap():
    import subprocess
    for label, n in (("1M", 1_000_000), ("100M", 100_000_000)):
        n //= SCALE
        out = subprocess.run([sys.executable, __file__, "imapchild", str(n)],
                             capture_output=True, text=True, check=True).stdout.split()
        emit("imap growth", label + " rate", float(out[0]), "items/s")
        emit("imap growth", label + " peak RSS", int(out[1]) / 1024, "MiB")


_BARRIER = None


def arm(barrier):
    global _BARRIER
    _BARRIER = barrier


def meet(_):
    _BARRIER.wait(120)
    return os.getpid()


def start_round(ctx, n):
    barrier = ctx.Barrier(n)
    t = time.perf_counter()
    pool = ctx.Pool(n, initializer=arm, initargs=(barrier,))
    pids = set(pool.map(meet, range(n), chunksize=1))
    ms = (time.perf_counter() - t) * 1e3
    assert len(pids) == n
    pool.terminate()
    pool.join()
    return ms


def w_pool_start():
    for method in ("spawn", "forkserver"):
        ctx = mp.get_context(method)
        # The forkserver starts on first use: that start belongs to no pool's figure.
        start_round(ctx, 2)
        for n in (2, 16, 64):
            runs = [start_round(ctx, n) for _ in range(1 if QUICK else 3)]
            emit("Pool(n) start", "%s %d" % (method, n), statistics.median(runs), "ms")


def echo(b):
    return b


def idle_figures(pid):
    # As growth.rs reads ours: half a second after the worker's last answer.
    time.sleep(0.5)
    path = "/proc/%d/smaps_rollup" % pid
    return proc_kib(path, "Rss:") / 1024, proc_kib(path, "Private_Dirty:") / 1024


def w_idle():
    with mp.get_context("fork").Pool(1) as pool:
        pid = pool.apply(getpid)
        rss, private = idle_figures(pid)
        emit("idle worker", "fresh RSS", rss, "MiB")
        emit("idle worker", "fresh Private_Dirty", private, "MiB")
        assert len(pool.apply(echo, (b"\x07" * (64 << 20),))) == 64 << 20
        assert pool.apply(getpid) == pid
        rss, private = idle_figures(pid)
        emit("idle worker", "after 64 MiB RSS", rss, "MiB")
        emit("idle worker", "after 64 MiB Private_Dirty", private, "MiB")


def main():
    if sys.argv[1:2] == ["imapchild"]:
        imap_child(int(sys.argv[2]))
        return
    only = [a for a in sys.argv[1:] if not a.startswith("--")]
    def wanted(name):
        return not only or name in only
    # W8 first, from a small parent (as the Rust side does): a fork's cost grows with what
    # the parent has touched.
    if wanted("w8"):
        for method in ("fork", "forkserver", "spawn"):
            w8_process(method)
    if wanted("w1"):
        for method in ("fork", "forkserver", "spawn"):
            w1_startup(method)
    if any(wanted(g) for g in ("w2", "w3", "w4")):
        with mp.get_context("fork").Pool(2) as pool:
            if wanted("w2"):
                w2_apply(pool)
            if wanted("w3"):
                w3_map(pool)
            if wanted("w4"):
                w4_payloads(pool)
    if wanted("w2"):
        w2_executor()
    if wanted("w3"):
        w3_executor()
    if wanted("w5"):
        w5_pipe()
    if wanted("w6"):
        w6_queue()
    if wanted("w7"):
        w7_lock()
    if wanted("w3growth"):
        w3_growth()
    if wanted("imap"):
        w_imap()
    if wanted("poolstart"):
        w_pool_start()
    if wanted("idle"):
        w_idle()


if __name__ == "__main__":
    main()

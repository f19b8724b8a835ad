//! Fixed-size plain items (integers, floats, `bool`, `char`, their tuples and arrays) through
//! real worker processes: they travel in the bulk layout (raw little-endian arrays, see
//! `pool_api`'s `bulk` module), chosen without the caller asking, and come back equal to
//! what the functions compute here, on both transports, through every way of submitting.

use pool_api::{Bytes, Error, Pool, Process, TransportKind};

fn pool(transport: TransportKind) -> Pool {
    Pool::builder()
        .processes(2)
        .transport(transport)
        .build()
        .unwrap()
}

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn halve(x: f64) -> f64 {
    x / 2.0
}

fn swap((a, b): (u32, f32)) -> (f32, u32) {
    (b, a)
}

fn weigh(a: u32, b: f32) -> f64 {
    f64::from(a) * f64::from(b)
}

fn is_letter(c: char) -> bool {
    c.is_alphabetic()
}

fn sum4(v: [i32; 4]) -> i64 {
    v.iter().map(|&x| i64::from(x)).sum()
}

fn fails_on_seven(x: u64) -> u64 {
    assert!(x % 1000 != 7, "item {x}");
    x + 1
}

const N: u64 = 200_000;

fn pairs() -> Vec<(u32, f32)> {
    (0..N as u32).map(|i| (i, i as f32 * 0.25)).collect()
}

fn each_transport(check: impl Fn(TransportKind)) {
    for transport in [TransportKind::Pipe, TransportKind::Shm] {
        check(transport);
    }
}

#[test]
fn a_big_map_of_u64_f64_and_pairs_comes_back_whole() {
    each_transport(|transport| {
        let pool = pool(transport);
        let got = pool.map(square, 0..N).unwrap();
        assert_eq!(got, (0..N).map(square).collect::<Vec<_>>(), "{transport:?}");
        let floats: Vec<f64> = (0..N).map(|i| i as f64 * 1.5 - 7.0).collect();
        let got = pool.map(halve, floats.clone()).unwrap();
        let want: Vec<f64> = floats.iter().copied().map(halve).collect();
        // Bit for bit: the layout copies the values' bytes.
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        assert_eq!(got.len(), want.len());
        let got = pool.map(swap, pairs()).unwrap();
        assert_eq!(got, pairs().into_iter().map(swap).collect::<Vec<_>>());
        let got = pool.map_chunked(sum4, (0..1000).map(|i| [i, -i, 2 * i, 7]), 33);
        assert_eq!(
            got.unwrap(),
            (0..1000).map(|i| 2 * i64::from(i) + 7).collect::<Vec<_>>()
        );
        let text: Vec<char> = "héllo, wörld 1 2 3 ✓ Ω"
            .chars()
            .cycle()
            .take(5000)
            .collect();
        let got = pool.map(is_letter, text.clone()).unwrap();
        assert_eq!(got, text.into_iter().map(is_letter).collect::<Vec<_>>());
    });
}

#[test]
fn every_way_of_submitting_carries_plain_items() {
    each_transport(|transport| {
        let pool = pool(transport);
        let want: Vec<u64> = (0..N).map(square).collect();
        let got: Vec<u64> = pool
            .imap(square, 0..N, 5000)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got, want, "imap {transport:?}");
        let mut got: Vec<u64> = pool
            .imap_unordered(square, 0..N, 5000)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        got.sort_unstable();
        let mut sorted = want.clone();
        sorted.sort_unstable();
        assert_eq!(got, sorted, "imap_unordered {transport:?}");
        let got = pool.starmap(weigh, pairs()).unwrap();
        let want_star: Vec<f64> = pairs().into_iter().map(|(a, b)| weigh(a, b)).collect();
        assert_eq!(got, want_star, "starmap {transport:?}");
        assert_eq!(pool.apply(square, 12_345).unwrap(), square(12_345));
        assert_eq!(pool.apply(swap, (3, 0.5)).unwrap(), (0.5, 3));
        let got = pool.map_async(square, (0..N).collect::<Vec<_>>(), None);
        assert_eq!(got.unwrap().get().unwrap(), want, "map_async {transport:?}");
    });
}

#[test]
fn panics_among_plain_results_stay_in_place() {
    each_transport(|transport| {
        let pool = pool(transport);
        let outcomes = pool.map_results(fails_on_seven, 0..5000u64, None).unwrap();
        assert_eq!(outcomes.len(), 5000);
        for (i, outcome) in outcomes.iter().enumerate() {
            if i % 1000 == 7 {
                assert!(
                    matches!(outcome, Err(Error::Panicked { message, .. }) if message == &format!("item {i}")),
                    "{i}: {outcome:?}"
                );
            } else {
                assert_eq!(outcome.as_ref().unwrap(), &(i as u64 + 1), "{transport:?}");
            }
        }
        // `map` reports the lowest-index failure.
        let err = pool.map(fails_on_seven, 0..5000u64).unwrap_err();
        assert!(matches!(err, Error::Panicked { message, .. } if message == "item 7"));
    });
}

#[test]
fn a_process_takes_and_returns_plain_values() {
    let p = Process::new(square, 9).unwrap().start().unwrap();
    assert_eq!(p.join().unwrap(), 81);
    let p = Process::new(fails_on_seven, 7).unwrap().start().unwrap();
    assert!(matches!(p.join(), Err(Error::Panicked { .. })));
}

fn checksum(data: Vec<u8>) -> u64 {
    data.iter().map(|&b| u64::from(b)).sum::<u64>() + data.len() as u64
}

fn checksum_bytes(data: Bytes) -> u64 {
    checksum(data.0)
}

fn reverse(mut data: Vec<u8>) -> Vec<u8> {
    data.reverse();
    data
}

/// Byte vectors are sent from where they are (no encoding copy), including chunks larger
/// than a shared-memory ring.
#[test]
fn byte_vectors_travel_whole_in_chunks_of_any_size() {
    each_transport(|transport| {
        let pool = pool(transport);
        let sizes = [0usize, 1, 300, 1 << 20, 5 << 20, 5 << 20, 7, 3 << 20];
        let inputs: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 31 + j * 7) as u8).collect())
            .collect();
        let want: Vec<u64> = inputs.iter().cloned().map(checksum).collect();
        for chunksize in [1, 3, 8] {
            let got = pool
                .map_chunked(checksum, inputs.clone(), chunksize)
                .unwrap();
            assert_eq!(got, want, "{transport:?} chunks of {chunksize}");
            let bytes: Vec<Bytes> = inputs.iter().cloned().map(Bytes).collect();
            let got = pool.map_chunked(checksum_bytes, bytes, chunksize).unwrap();
            assert_eq!(got, want, "{transport:?} Bytes in chunks of {chunksize}");
        }
        let got = pool.map(reverse, inputs.clone()).unwrap();
        assert_eq!(got, inputs.into_iter().map(reverse).collect::<Vec<_>>());
    });
}

/// Crashes its worker on one item (a placed chunk of a sized map never comes back), or
/// returns its argument tripled.
fn dies_on_12345(x: u64) -> u64 {
    if x == 12_345 {
        std::process::abort();
    }
    x * 3
}

#[test]
fn sized_maps_of_large_chunks_come_back_whole_around_a_lost_worker() {
    // Chunks of 600 `u64`s (4800 bytes) are written in place by the reader threads; the
    // last chunk is short, and a chunk of 100 (800 bytes) is copied by the caller.
    each_transport(|transport| {
        let pool = pool(transport);
        for (items, chunksize) in [(10_007u64, 600), (30_000, 600), (10_007, 100), (601, 600)] {
            let got = pool.map_chunked(square, 0..items, chunksize).unwrap();
            let want: Vec<u64> = (0..items).map(square).collect();
            assert_eq!(
                got, want,
                "{transport:?} {items} items in chunks of {chunksize}"
            );
        }
        let err = pool
            .map_chunked(dies_on_12345, 0..40_000, 1000)
            .unwrap_err();
        assert!(matches!(err, Error::WorkerLost { .. }), "{err:?}");
        // The pool goes on, and places the next map's results as before.
        let got = pool
            .map_chunked(dies_on_12345, 20_000..60_000, 1000)
            .unwrap();
        assert_eq!(got, (20_000..60_000).map(|x| x * 3).collect::<Vec<_>>());
    });
}

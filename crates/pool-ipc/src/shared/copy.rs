//! Copies between private memory and memory another process may access at the same time
//! (atomic-memcpy style): every access to the shared side is an atomic one, so a peer that
//! writes the same bytes concurrently — buggy, hostile, or just a racing reader and writer of
//! a `SharedMemory` — changes the values copied but is not a data race (undefined behaviour)
//! under Rust's memory model, as a `ptr::copy_nonoverlapping` over those bytes would be.
//!
//! The shared side is accessed as `AtomicU64` words where it is 8-byte aligned and as
//! `AtomicU8` at the unaligned edges, all `Relaxed`: ordering is the caller's business (a
//! ring's positions are published with `Release` and read with `Acquire`, a queue's are under
//! its lock). On x86-64 and AArch64 a relaxed word access is a plain `mov`/`ldr`; what is lost
//! against `memcpy` is that the compiler may not merge the accesses into vector ones, so the
//! word loop is unrolled four words a step. That still cost a third of W5's rate (1 KiB
//! messages: 128 word moves against 64 vector ones), so on x86-64 the bulk of a copy of 64
//! bytes or more is done in an `asm!` block instead: 32-byte AVX moves (16-byte SSE2 ones
//! on a CPU without AVX), as `memcpy` does for such sizes, and
//! from [`REP_MOVSB_MIN`] bytes on one `rep movsb` (the fast-strings microcode `memcpy`
//! itself uses for large copies). An asm block's memory accesses are what its instructions
//! do on the machine, and these move each byte with a single-copy-atomic access, so the
//! block is a sequence of relaxed byte atomics, as the loop is: no data race. Miri cannot
//! run `asm!`: under Miri the loop does all copies.
//!
//! The private side is accessed with ordinary (unaligned) reads and writes.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};

/// Words per step of the unrolled loop.
const UNROLL: usize = 4;

/// The shortest copy done by `rep movsb` (below, its start-up costs more than SSE2 moves).
#[cfg(all(target_arch = "x86_64", not(miri)))]
const REP_MOVSB_MIN: usize = 2048;

/// Copies the bulk of `len` bytes in an asm block (see the module documentation): all of
/// them with `rep movsb` from [`REP_MOVSB_MIN`] on, else whole 64-byte blocks with SSE2
/// moves. Returns how many bytes it copied; the caller copies the rest.
///
/// # Safety
/// As [`copy_from_shared`] and [`copy_to_shared`]: both ranges valid, not overlapping.
#[cfg(all(target_arch = "x86_64", not(miri)))]
#[inline]
unsafe fn copy_bulk(src: *const u8, dst: *mut u8, len: usize) -> usize {
    if len >= REP_MOVSB_MIN {
        // SAFETY: reads `len` bytes at `src` and writes `len` at `dst`, valid per the
        // caller; the direction flag is clear on entry to an asm block (Rust's rule), so it
        // copies upwards; it touches no stack and no flag.
        unsafe {
            std::arch::asm!(
                "rep movsb",
                inout("rcx") len => _,
                inout("rsi") src => _,
                inout("rdi") dst => _,
                options(nostack, preserves_flags)
            );
        }
        return len;
    }
    let blocks = len / 64;
    if blocks == 0 {
        return 0;
    }
    if avx() {
        // SAFETY: the CPU has AVX (just checked), `len >= 64`; the rest as below.
        return unsafe { copy_avx(src, dst, len) };
    }
    // SAFETY: reads and writes `blocks * 64 <= len` bytes from `src` and `dst`, valid per
    // the caller (unaligned moves: no alignment needed); SSE2 is part of x86-64; the loop
    // runs `blocks >= 1` times; no stack.
    unsafe {
        std::arch::asm!(
            "2:",
            "movdqu {a}, [{s}]",
            "movdqu {b}, [{s} + 16]",
            "movdqu {c}, [{s} + 32]",
            "movdqu {d}, [{s} + 48]",
            "movdqu [{t}], {a}",
            "movdqu [{t} + 16], {b}",
            "movdqu [{t} + 32], {c}",
            "movdqu [{t} + 48], {d}",
            "add {s}, 64",
            "add {t}, 64",
            "dec {n}",
            "jnz 2b",
            s = inout(reg) src => _,
            t = inout(reg) dst => _,
            n = inout(reg) blocks => _,
            a = out(xmm_reg) _,
            b = out(xmm_reg) _,
            c = out(xmm_reg) _,
            d = out(xmm_reg) _,
            options(nostack)
        );
    }
    blocks * 64
}

/// Whether the CPU has AVX (asked once).
#[cfg(all(target_arch = "x86_64", not(miri)))]
#[inline]
fn avx() -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    /// 0: not asked yet, 1: no, 2: yes.
    static AVX: AtomicU8 = AtomicU8::new(0);
    match AVX.load(Relaxed) {
        0 => {
            let yes = std::arch::is_x86_feature_detected!("avx");
            AVX.store(if yes { 2 } else { 1 }, Relaxed);
            yes
        }
        known => known == 2,
    }
}

/// The bulk of `len >= 64` bytes with 32-byte AVX moves, the stores aligned (as `memcpy`
/// does): one unaligned move of the first 32 bytes, then aligned stores from the first
/// 32-byte boundary of `dst` past it (rewriting up to 31 bytes already copied: the same
/// bytes, or as new a value of them). Returns how many bytes it copied (more than
/// `len - 64`).
///
/// # Safety
/// The CPU has AVX; `len >= 64`; `len` bytes valid at both, not overlapping.
#[cfg(all(target_arch = "x86_64", not(miri)))]
#[target_feature(enable = "avx")]
unsafe fn copy_avx(src: *const u8, dst: *mut u8, len: usize) -> usize {
    let skip = 32 - (dst as usize & 31);
    let blocks = (len - skip) / 32;
    // SAFETY: per the caller: the first move covers bytes [0, 32), the loop `blocks >= 1`
    // blocks of 32 from `skip <= 32`, ending at `skip + blocks * 32 <= len`; the stores of
    // the loop are 32-byte aligned. `vzeroupper` at the end spares later SSE code the
    // transition penalty.
    unsafe {
        std::arch::asm!(
            "vmovdqu {a}, [{s}]",
            "vmovdqu [{t}], {a}",
            "add {s}, {k}",
            "add {t}, {k}",
            "2:",
            "vmovdqu {a}, [{s}]",
            "vmovdqa [{t}], {a}",
            "add {s}, 32",
            "add {t}, 32",
            "dec {n}",
            "jnz 2b",
            "vzeroupper",
            s = inout(reg) src => _,
            t = inout(reg) dst => _,
            n = inout(reg) blocks => _,
            k = in(reg) skip,
            a = out(ymm_reg) _,
            options(nostack)
        );
    }
    skip + blocks * 32
}

/// Bytes before `ptr` reaches 8-byte alignment, at most `len`.
fn head_len(ptr: *const u8, len: usize) -> usize {
    ((ptr as usize).wrapping_neg() & 7).min(len)
}

/// Copies `len` bytes from `src`, memory others may write concurrently, to `dst`.
///
/// # Safety
/// `src` is valid for reads of `len` bytes and every concurrent access to them by another
/// thread or process is atomic (another call of this module, or an atomic); `dst` is valid
/// for writes of `len` bytes, does not overlap `src`, and nobody else accesses it meanwhile.
pub unsafe fn copy_from_shared(src: *const u8, dst: *mut u8, len: usize) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: the caller's promises are `copy_bulk`'s; the rest is copied below.
    let (src, dst, len) = unsafe {
        let done = copy_bulk(src, dst, len);
        (src.add(done), dst.add(done), len - done)
    };
    let head = head_len(src, len);
    // SAFETY: every offset stays below `len`, inside both ranges (the
    // caller's promise); `src + head` is 8-byte aligned, so each word is an aligned
    // `AtomicU64` there; `AtomicU8` has no alignment need; the shared side is only accessed
    // atomically, the private side only by us.
    unsafe {
        for i in 0..head {
            *dst.add(i) = AtomicU8::from_ptr(src.add(i).cast_mut()).load(Relaxed);
        }
        let words = (len - head) / 8;
        let s = src.add(head).cast::<u64>().cast_mut();
        let d = dst.add(head).cast::<u64>();
        let mut w = 0;
        while w + UNROLL <= words {
            let a = AtomicU64::from_ptr(s.add(w)).load(Relaxed);
            let b = AtomicU64::from_ptr(s.add(w + 1)).load(Relaxed);
            let c = AtomicU64::from_ptr(s.add(w + 2)).load(Relaxed);
            let e = AtomicU64::from_ptr(s.add(w + 3)).load(Relaxed);
            d.add(w).write_unaligned(a);
            d.add(w + 1).write_unaligned(b);
            d.add(w + 2).write_unaligned(c);
            d.add(w + 3).write_unaligned(e);
            w += UNROLL;
        }
        while w < words {
            d.add(w)
                .write_unaligned(AtomicU64::from_ptr(s.add(w)).load(Relaxed));
            w += 1;
        }
        for i in head + words * 8..len {
            *dst.add(i) = AtomicU8::from_ptr(src.add(i).cast_mut()).load(Relaxed);
        }
    }
}

/// Copies `len` bytes from `src` to `dst`, memory others may read (or write) concurrently.
///
/// # Safety
/// `dst` is valid for writes of `len` bytes and every concurrent access to them by another
/// thread or process is atomic (another call of this module, or an atomic); `src` is valid
/// for reads of `len` bytes, does not overlap `dst`, and nobody writes it meanwhile.
pub unsafe fn copy_to_shared(src: *const u8, dst: *mut u8, len: usize) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: the caller's promises are `copy_bulk`'s; the rest is copied below.
    let (src, dst, len) = unsafe {
        let done = copy_bulk(src, dst, len);
        (src.add(done), dst.add(done), len - done)
    };
    let head = head_len(dst, len);
    // SAFETY: as in `copy_from_shared`, with the roles swapped: `dst +
    // head` is 8-byte aligned and only accessed atomically.
    unsafe {
        for i in 0..head {
            AtomicU8::from_ptr(dst.add(i)).store(*src.add(i), Relaxed);
        }
        let words = (len - head) / 8;
        let s = src.add(head).cast::<u64>();
        let d = dst.add(head).cast::<u64>();
        let mut w = 0;
        while w + UNROLL <= words {
            let a = s.add(w).read_unaligned();
            let b = s.add(w + 1).read_unaligned();
            let c = s.add(w + 2).read_unaligned();
            let e = s.add(w + 3).read_unaligned();
            AtomicU64::from_ptr(d.add(w)).store(a, Relaxed);
            AtomicU64::from_ptr(d.add(w + 1)).store(b, Relaxed);
            AtomicU64::from_ptr(d.add(w + 2)).store(c, Relaxed);
            AtomicU64::from_ptr(d.add(w + 3)).store(e, Relaxed);
            w += UNROLL;
        }
        while w < words {
            AtomicU64::from_ptr(d.add(w)).store(s.add(w).read_unaligned(), Relaxed);
            w += 1;
        }
        for i in head + words * 8..len {
            AtomicU8::from_ptr(dst.add(i)).store(*src.add(i), Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    /// A buffer of `u64`s, so that byte offsets of every alignment are at hand.
    fn words(n: usize) -> Vec<u64> {
        vec![0; n]
    }

    #[test]
    fn every_alignment_and_length_round_trips() {
        // Lengths around the edges (head only, one word, one unrolled step, steps plus tail)
        // at every source and destination misalignment.
        let pattern: Vec<u8> = (0..2200u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [
            0, 1, 3, 7, 8, 9, 15, 16, 31, 32, 33, 39, 40, 63, 64, 65, 100, 128, 190, 300, 2047,
            2048, 2100,
        ] {
            for shared_off in 0..8usize {
                // Under Miri (some 1000 times slower) two private offsets stand for all.
                for private_off in (0..8).filter(|o| !cfg!(miri) || o % 5 == 0) {
                    let size = (shared_off + len).div_ceil(8) * 8 + 8;
                    let mut shared = words(size / 8);
                    let base = shared.as_mut_ptr().cast::<u8>();
                    let src = &pattern[private_off..private_off + len];
                    // SAFETY: `shared` has `size > shared_off + len` bytes; single thread.
                    unsafe { copy_to_shared(src.as_ptr(), base.add(shared_off), len) };
                    let bytes = shared.as_ptr().cast::<u8>();
                    // SAFETY: as above, a read of bytes we own.
                    let view = unsafe { std::slice::from_raw_parts(bytes, size) };
                    assert_eq!(&view[shared_off..shared_off + len], src);
                    assert!(view[..shared_off].iter().all(|&b| b == 0), "before");
                    assert!(view[shared_off + len..].iter().all(|&b| b == 0), "after");

                    let mut out = vec![0xAAu8; len + 16];
                    // SAFETY: as above; `out` has `private_off + len` bytes and more.
                    unsafe {
                        copy_from_shared(
                            bytes.add(shared_off),
                            out.as_mut_ptr().add(private_off),
                            len,
                        )
                    };
                    assert_eq!(&out[private_off..private_off + len], src);
                    assert!(out[..private_off].iter().all(|&b| b == 0xAA));
                    assert!(out[private_off + len..].iter().all(|&b| b == 0xAA));
                }
            }
        }
    }

    /// The shared buffer of the concurrent test (atomics: shared memory anyone may write
    /// through a pointer), handed to both threads by address.
    struct Shared(Vec<AtomicU64>);

    /// Two threads copy into and out of the same bytes at once, as a ring's peers may (a
    /// hostile writer scribbling on published bytes) and as `SharedMemory` users may. Miri
    /// accepts it: every shared access is atomic. The same test with `ptr::copy_nonoverlapping`
    /// in place of the two functions is reported by Miri as "Undefined Behavior: Data race
    /// detected between (1) non-atomic read on thread ... and (2) non-atomic write on thread
    /// ...".
    #[test]
    fn concurrent_copies_are_not_data_races() {
        const LEN: usize = 61;
        let shared = Arc::new(Shared((0..9).map(|_| AtomicU64::new(0)).collect()));
        let rounds = if cfg!(miri) { 4 } else { 200 };
        let writer = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                // Atomics: writing through a pointer from a shared borrow is allowed.
                let base = shared.0.as_ptr().cast::<u8>().cast_mut();
                for round in 0..rounds {
                    let src = [round as u8; LEN];
                    // SAFETY: 61 bytes from offset 3 lie inside the 72-byte buffer, which
                    // `shared` keeps alive; the other thread only copies atomically.
                    unsafe { copy_to_shared(src.as_ptr(), base.add(3), LEN) };
                }
            })
        };
        let base = shared.0.as_ptr().cast::<u8>();
        for _ in 0..rounds {
            let mut out = [0u8; LEN];
            // SAFETY: as in the writer.
            unsafe { copy_from_shared(base.add(3), out.as_mut_ptr(), LEN) };
            // Torn values are allowed (nothing orders the two), out-of-thin-air ones not.
            assert!(out.iter().all(|&b| (b as usize) < rounds));
        }
        writer.join().unwrap();
    }
}

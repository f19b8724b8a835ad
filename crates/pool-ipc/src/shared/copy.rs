//! Copies between private memory and memory another process may access at the same time
//! (atomic-memcpy style): every access to the shared side is a single-copy-atomic one, so a
//! peer that writes the same bytes concurrently — buggy, hostile, or just a racing reader and
//! writer of a `SharedMemory` — changes the values copied but is not a data race (undefined
//! behaviour) under Rust's memory model, as a `ptr::copy_nonoverlapping` over those bytes
//! would be.
//!
//! # x86-64
//!
//! Every copy is done by `asm!` blocks, the way `memcpy` does it: an asm block's memory
//! accesses are what its instructions do on the machine, and an x86 move accesses each byte
//! it covers with a single-copy-atomic access (a byte is never torn), so each block is a
//! sequence of relaxed byte atomics on the shared side: no data race. By length:
//!
//! - up to 16 bytes: two general-register moves of the largest size that fits (8, 4, 2 or
//!   1 bytes), the second ending at the last byte, so they overlap when the length is not
//!   that size;
//! - 17 to 32 bytes: two overlapping 16-byte SSE2 moves;
//! - from 2 KiB on: one `rep movsb` (the fast-strings microcode `memcpy` itself uses for
//!   large copies);
//! - in between, with AVX: up to 128 bytes, two or four overlapping 32-byte moves; above,
//!   the first 32 and the last 128 bytes loaded up front, then 128 bytes a step (four
//!   32-byte loads, four stores aligned on the destination), then the preloaded ends stored;
//!   without AVX, 16-byte SSE2 moves a step and the preloaded last 16 bytes.
//!
//! The two small cases are inlined at each call site (the rest is one call): the ring copies
//! an 8-byte length prefix beside every message, and a copy that does not wrap has an empty
//! second half. Sent through a general out-of-line path shared with the message bodies,
//! those small copies cost W5 (1 KiB messages over shm) about a quarter of its rate.
//!
//! Overlapping moves write some bytes twice: with the same value, or with as new a value
//! of a shared byte that changed in between; reading a shared byte twice is harmless too.
//!
//! # Elsewhere, and under Miri
//!
//! The shared side is accessed as `AtomicU64` words where it is 8-byte aligned and as
//! `AtomicU8` at the unaligned edges, all `Relaxed`; the private side with ordinary
//! (unaligned) reads and writes. On AArch64 a relaxed word access is a plain `ldr`/`str`;
//! what is lost against `memcpy` is that the compiler may not merge the accesses into vector
//! ones, so the word loop is unrolled four words a step. Miri cannot run `asm!`: under Miri
//! this loop does all copies, on x86-64 too.
//!
//! Ordering is the caller's business in every case (a ring's positions are published with
//! `Release` and read with `Acquire`, a queue's are under its lock).

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};

/// Copies `len` bytes from `src`, memory others may write concurrently, to `dst`.
///
/// # Safety
/// `src` is valid for reads of `len` bytes and every concurrent access to them by another
/// thread or process is atomic (another call of this module, or an atomic); `dst` is valid
/// for writes of `len` bytes, does not overlap `src`, and nobody else accesses it meanwhile.
#[inline]
pub unsafe fn copy_from_shared(src: *const u8, dst: *mut u8, len: usize) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: the caller's promises are `x86::copy`'s.
    unsafe {
        x86::copy(src, dst, len)
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    // SAFETY: the caller's promises are `words::copy_from`'s.
    unsafe {
        words::copy_from(src, dst, len)
    }
}

/// Copies `len` bytes from `src` to `dst`, memory others may read (or write) concurrently.
///
/// # Safety
/// `dst` is valid for writes of `len` bytes and every concurrent access to them by another
/// thread or process is atomic (another call of this module, or an atomic); `src` is valid
/// for reads of `len` bytes, does not overlap `dst`, and nobody writes it meanwhile.
#[inline]
pub unsafe fn copy_to_shared(src: *const u8, dst: *mut u8, len: usize) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: the caller's promises are `x86::copy`'s.
    unsafe {
        x86::copy(src, dst, len)
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    // SAFETY: the caller's promises are `words::copy_to`'s.
    unsafe {
        words::copy_to(src, dst, len)
    }
}

/// The x86-64 copies: `asm!` moves only (see the module documentation). The same code
/// serves both directions, as every move is byte-wise single-copy atomic on both sides.
#[cfg(all(target_arch = "x86_64", not(miri)))]
mod x86 {
    use std::arch::asm;

    /// The shortest copy done by `rep movsb` (below, its start-up costs more than vector
    /// moves).
    pub(super) const REP_MOVSB_MIN: usize = 2048;

    /// Copies `len` bytes from `src` to `dst`.
    ///
    /// # Safety
    /// `src` valid for reads and `dst` for writes of `len` bytes, not overlapping; any
    /// concurrent access to either is atomic.
    #[inline(always)]
    pub(super) unsafe fn copy(src: *const u8, dst: *mut u8, len: usize) {
        if len <= 16 {
            // SAFETY: the caller's promise.
            unsafe { copy_small(src, dst, len) }
        } else if len <= 32 {
            // SAFETY: `16 < len <= 32`: the two moves cover [0, 16) and [len - 16, len),
            // inside both ranges; SSE2 is part of x86-64; unaligned moves need no alignment.
            unsafe {
                asm!(
                    "movdqu {a}, [{s}]",
                    "movdqu {b}, [{s} + {l} - 16]",
                    "movdqu [{d}], {a}",
                    "movdqu [{d} + {l} - 16], {b}",
                    s = in(reg) src,
                    d = in(reg) dst,
                    l = in(reg) len,
                    a = out(xmm_reg) _,
                    b = out(xmm_reg) _,
                    options(nostack, preserves_flags)
                );
            }
        } else {
            // SAFETY: the caller's promise; `len > 32`.
            unsafe { copy_large(src, dst, len) }
        }
    }

    /// Copies `len <= 16` bytes with two general-register moves of the largest size up to
    /// `len`, the second ending at the last byte.
    ///
    /// # Safety
    /// As [`copy`]; `len <= 16`.
    #[inline(always)]
    unsafe fn copy_small(src: *const u8, dst: *mut u8, len: usize) {
        if len >= 8 {
            // SAFETY: each move of `n` bytes (here and below) starts at 0 or at `len - n`
            // with `n <= len`, so both stay inside the ranges (the caller's promise);
            // general-register moves need no alignment.
            unsafe {
                asm!(
                    "mov {a}, qword ptr [{s}]",
                    "mov {b}, qword ptr [{s} + {l} - 8]",
                    "mov qword ptr [{d}], {a}",
                    "mov qword ptr [{d} + {l} - 8], {b}",
                    s = in(reg) src,
                    d = in(reg) dst,
                    l = in(reg) len,
                    a = out(reg) _,
                    b = out(reg) _,
                    options(nostack, preserves_flags)
                );
            }
        } else if len >= 4 {
            // SAFETY: as above.
            unsafe {
                asm!(
                    "mov {a:e}, dword ptr [{s}]",
                    "mov {b:e}, dword ptr [{s} + {l} - 4]",
                    "mov dword ptr [{d}], {a:e}",
                    "mov dword ptr [{d} + {l} - 4], {b:e}",
                    s = in(reg) src,
                    d = in(reg) dst,
                    l = in(reg) len,
                    a = out(reg) _,
                    b = out(reg) _,
                    options(nostack, preserves_flags)
                );
            }
        } else if len >= 2 {
            // SAFETY: as above.
            unsafe {
                asm!(
                    "movzx {a:e}, word ptr [{s}]",
                    "movzx {b:e}, word ptr [{s} + {l} - 2]",
                    "mov word ptr [{d}], {a:x}",
                    "mov word ptr [{d} + {l} - 2], {b:x}",
                    s = in(reg) src,
                    d = in(reg) dst,
                    l = in(reg) len,
                    a = out(reg) _,
                    b = out(reg) _,
                    options(nostack, preserves_flags)
                );
            }
        } else if len == 1 {
            // SAFETY: as above.
            unsafe {
                asm!(
                    "movzx {a:e}, byte ptr [{s}]",
                    "mov byte ptr [{d}], {a:l}",
                    s = in(reg) src,
                    d = in(reg) dst,
                    a = out(reg) _,
                    options(nostack, preserves_flags)
                );
            }
        }
    }

    /// Copies `len > 32` bytes: `rep movsb` from [`REP_MOVSB_MIN`] on, else vector moves.
    ///
    /// # Safety
    /// As [`copy`]; `len > 32`.
    #[inline(never)]
    pub(super) unsafe fn copy_large(src: *const u8, dst: *mut u8, len: usize) {
        if len >= REP_MOVSB_MIN {
            // SAFETY: reads `len` bytes at `src` and writes `len` at `dst`, valid per the
            // caller; the direction flag is clear on entry to an asm block (Rust's rule), so
            // it copies upwards; it touches no stack and no flag.
            unsafe {
                asm!(
                    "rep movsb",
                    inout("rcx") len => _,
                    inout("rsi") src => _,
                    inout("rdi") dst => _,
                    options(nostack, preserves_flags)
                );
            }
        } else if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU has AVX (just checked); the rest is the caller's promise.
            unsafe { copy_avx(src, dst, len) }
        } else {
            // SAFETY: the caller's promise.
            unsafe { copy_sse2(src, dst, len) }
        }
    }

    /// Copies `len > 32` bytes with 32-byte AVX moves (as `memcpy` does for such sizes).
    ///
    /// # Safety
    /// As [`copy`]; `len > 32`; the CPU has AVX.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn copy_avx(src: *const u8, dst: *mut u8, len: usize) {
        if len <= 64 {
            // SAFETY: `32 < len <= 64`: [0, 32) and [len - 32, len), inside both ranges.
            // `vzeroupper` spares later SSE code the transition penalty.
            unsafe {
                asm!(
                    "vmovdqu {a}, [{s}]",
                    "vmovdqu {b}, [{s} + {l} - 32]",
                    "vmovdqu [{d}], {a}",
                    "vmovdqu [{d} + {l} - 32], {b}",
                    "vzeroupper",
                    s = in(reg) src,
                    d = in(reg) dst,
                    l = in(reg) len,
                    a = out(ymm_reg) _,
                    b = out(ymm_reg) _,
                    options(nostack, preserves_flags)
                );
            }
        } else if len <= 128 {
            // SAFETY: `64 < len <= 128`: [0, 64) and [len - 64, len), inside both ranges.
            unsafe {
                asm!(
                    "vmovdqu {a}, [{s}]",
                    "vmovdqu {b}, [{s} + 32]",
                    "vmovdqu {c}, [{s} + {l} - 64]",
                    "vmovdqu {e}, [{s} + {l} - 32]",
                    "vmovdqu [{d}], {a}",
                    "vmovdqu [{d} + 32], {b}",
                    "vmovdqu [{d} + {l} - 64], {c}",
                    "vmovdqu [{d} + {l} - 32], {e}",
                    "vzeroupper",
                    s = in(reg) src,
                    d = in(reg) dst,
                    l = in(reg) len,
                    a = out(ymm_reg) _,
                    b = out(ymm_reg) _,
                    c = out(ymm_reg) _,
                    e = out(ymm_reg) _,
                    options(nostack, preserves_flags)
                );
            }
        } else {
            // SAFETY: `len > 128`. The first 32 bytes and the last 128 (from `end = dst +
            // len - 128`) are loaded first and stored last. The loop starts at the first
            // 32-byte boundary of `dst` above `dst` (at most 32 bytes in, so the first move
            // covers what it skips) and stores 128 bytes at `t` only while `t < end`, so
            // never past `dst + len`; it stops at `t >= end`, from where the last 128 bytes
            // cover the rest. Its stores are 32-byte aligned.
            unsafe {
                asm!(
                    "vmovdqu {h}, [{s}]",
                    "vmovdqu {t0}, [{s} + {l} - 128]",
                    "vmovdqu {t1}, [{s} + {l} - 96]",
                    "vmovdqu {t2}, [{s} + {l} - 64]",
                    "vmovdqu {t3}, [{s} + {l} - 32]",
                    "lea {end}, [{d} + {l} - 128]",
                    "mov {t}, {d}",
                    "or {t}, 31",
                    "inc {t}",
                    "mov {f}, {t}",
                    "sub {f}, {d}",
                    "add {f}, {s}",
                    "cmp {t}, {end}",
                    "jae 3f",
                    "2:",
                    "vmovdqu {a}, [{f}]",
                    "vmovdqu {b}, [{f} + 32]",
                    "vmovdqu {c}, [{f} + 64]",
                    "vmovdqu {e}, [{f} + 96]",
                    "vmovdqa [{t}], {a}",
                    "vmovdqa [{t} + 32], {b}",
                    "vmovdqa [{t} + 64], {c}",
                    "vmovdqa [{t} + 96], {e}",
                    "add {f}, 128",
                    "add {t}, 128",
                    "cmp {t}, {end}",
                    "jb 2b",
                    "3:",
                    "vmovdqu [{end}], {t0}",
                    "vmovdqu [{end} + 32], {t1}",
                    "vmovdqu [{end} + 64], {t2}",
                    "vmovdqu [{end} + 96], {t3}",
                    "vmovdqu [{d}], {h}",
                    "vzeroupper",
                    s = in(reg) src,
                    d = in(reg) dst,
                    l = in(reg) len,
                    end = out(reg) _,
                    t = out(reg) _,
                    f = out(reg) _,
                    h = out(ymm_reg) _,
                    t0 = out(ymm_reg) _,
                    t1 = out(ymm_reg) _,
                    t2 = out(ymm_reg) _,
                    t3 = out(ymm_reg) _,
                    a = out(ymm_reg) _,
                    b = out(ymm_reg) _,
                    c = out(ymm_reg) _,
                    e = out(ymm_reg) _,
                    options(nostack)
                );
            }
        }
    }

    /// Copies `len > 16` bytes with 16-byte SSE2 moves, for a CPU without AVX.
    ///
    /// # Safety
    /// As [`copy`]; `len > 16`.
    pub(super) unsafe fn copy_sse2(src: *const u8, dst: *mut u8, len: usize) {
        // SAFETY: the last 16 bytes (from `end = dst + len - 16`) are loaded first and stored
        // last; the loop stores 16 bytes at `t`, from `dst` on, while `t < end` (so never
        // past `dst + len`; it runs at least once as `len > 16`), and stops at `t >= end`,
        // from where the last 16 bytes cover the rest. SSE2 is part of x86-64.
        unsafe {
            asm!(
                "movdqu {z}, [{s} + {l} - 16]",
                "lea {end}, [{d} + {l} - 16]",
                "2:",
                "movdqu {a}, [{s}]",
                "movdqu [{d}], {a}",
                "add {s}, 16",
                "add {d}, 16",
                "cmp {d}, {end}",
                "jb 2b",
                "movdqu [{end}], {z}",
                s = inout(reg) src => _,
                d = inout(reg) dst => _,
                l = in(reg) len,
                end = out(reg) _,
                z = out(xmm_reg) _,
                a = out(xmm_reg) _,
                options(nostack)
            );
        }
    }
}

/// The portable copies: relaxed `AtomicU64` words on the shared side, `AtomicU8` at its
/// unaligned edges.
#[cfg_attr(all(target_arch = "x86_64", not(miri)), allow(dead_code))]
mod words {
    use super::{AtomicU8, AtomicU64, Relaxed};

    /// Words per step of the unrolled loop.
    const UNROLL: usize = 4;

    /// Bytes before `ptr` reaches 8-byte alignment, at most `len`.
    fn head_len(ptr: *const u8, len: usize) -> usize {
        ((ptr as usize).wrapping_neg() & 7).min(len)
    }

    /// [`super::copy_from_shared`]'s portable body.
    ///
    /// # Safety
    /// As [`super::copy_from_shared`].
    pub(super) unsafe fn copy_from(src: *const u8, dst: *mut u8, len: usize) {
        let head = head_len(src, len);
        // SAFETY: every offset stays below `len`, inside both ranges (the caller's
        // promise); `src + head` is 8-byte aligned, so each word is an aligned `AtomicU64`
        // there; `AtomicU8` has no alignment need; the shared side is only accessed
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

    /// [`super::copy_to_shared`]'s portable body.
    ///
    /// # Safety
    /// As [`super::copy_to_shared`].
    pub(super) unsafe fn copy_to(src: *const u8, dst: *mut u8, len: usize) {
        let head = head_len(dst, len);
        // SAFETY: as in `copy_from`, with the roles swapped: `dst + head` is 8-byte aligned
        // and only accessed atomically.
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

    /// A copy function of this module: source, destination, length.
    type Copy = unsafe fn(*const u8, *mut u8, usize);

    /// Copies of lengths around every edge of every path (the small moves' sizes, 16, 32,
    /// 64, 128 plus the loop's steps, `rep movsb`'s threshold), at every source and
    /// destination misalignment, with `to` into a zeroed "shared" buffer and `from` back out
    /// of it: the bytes arrive, and nothing outside them is touched.
    fn round_trips(to: Copy, from: Copy, lens: &[usize]) {
        let pattern: Vec<u8> = (0..2200u32).map(|i| (i * 7 + 3) as u8).collect();
        for &len in lens {
            // 32 shared offsets, so that the AVX loop's alignment of its stores meets every
            // case; under Miri (some 1000 times slower) the word loop's 8 stand for all.
            for shared_off in (0..32usize).filter(|o| !cfg!(miri) || *o < 8) {
                for private_off in (0..8).filter(|o| !cfg!(miri) || o % 5 == 0) {
                    // Room after the copy, so that a move past its end shows as touched bytes
                    // (not as a corrupted heap); Miri reports such a move itself.
                    let slack = if cfg!(miri) { 8 } else { 256 };
                    let size = (shared_off + len).div_ceil(8) * 8 + slack;
                    let mut shared = words(size / 8);
                    let base = shared.as_mut_ptr().cast::<u8>();
                    let src = &pattern[private_off..private_off + len];
                    // SAFETY: `shared` has `size > shared_off + len` bytes; single thread.
                    unsafe { to(src.as_ptr(), base.add(shared_off), len) };
                    let bytes = shared.as_ptr().cast::<u8>();
                    // SAFETY: as above, a read of bytes we own.
                    let view = unsafe { std::slice::from_raw_parts(bytes, size) };
                    assert_eq!(&view[shared_off..shared_off + len], src, "len {len}");
                    assert!(view[..shared_off].iter().all(|&b| b == 0), "before");
                    assert!(view[shared_off + len..].iter().all(|&b| b == 0), "after");

                    let mut out = vec![0xAAu8; len + slack];
                    // SAFETY: as above; `out` has `private_off + len` bytes and more.
                    unsafe {
                        from(
                            bytes.add(shared_off),
                            out.as_mut_ptr().add(private_off),
                            len,
                        )
                    };
                    assert_eq!(&out[private_off..private_off + len], src, "len {len}");
                    assert!(out[..private_off].iter().all(|&b| b == 0xAA));
                    assert!(out[private_off + len..].iter().all(|&b| b == 0xAA));
                }
            }
        }
    }

    /// Every length up to 300, then the larger edges; under Miri, where only the word loop
    /// runs, the edges of that loop (bytes only, one word, one unrolled step, steps plus
    /// words and bytes).
    fn lengths() -> Vec<usize> {
        if cfg!(miri) {
            return vec![
                0, 1, 3, 7, 8, 9, 15, 16, 31, 32, 33, 39, 40, 63, 64, 65, 100, 128, 190, 300, 2047,
                2048, 2100,
            ];
        }
        let mut lens: Vec<usize> = (0..=300).collect();
        lens.extend([511, 512, 513, 1000, 1024, 1031, 2047, 2048, 2049, 2100]);
        lens
    }

    #[test]
    fn every_alignment_and_length_round_trips() {
        round_trips(copy_to_shared, copy_from_shared, &lengths());
    }

    /// The portable word loop, which is what Miri and other targets run, tested natively too.
    #[test]
    #[cfg_attr(
        miri,
        ignore = "under Miri the public functions are this loop, tested above"
    )]
    fn the_word_loop_round_trips() {
        round_trips(words::copy_to, words::copy_from, &lengths());
    }

    /// Both vector paths, whichever the CPU running the tests would take.
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    #[test]
    fn the_sse2_and_avx_paths_round_trip() {
        let lens: Vec<usize> = lengths().into_iter().filter(|&len| len > 32).collect();
        round_trips(x86::copy_sse2, x86::copy_sse2, &lens);
        if std::arch::is_x86_feature_detected!("avx") {
            /// `copy_avx` for a CPU known to have AVX.
            unsafe fn avx(src: *const u8, dst: *mut u8, len: usize) {
                // SAFETY: the CPU has AVX (checked above); the rest is the caller's promise.
                unsafe { x86::copy_avx(src, dst, len) }
            }
            round_trips(avx, avx, &lens);
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

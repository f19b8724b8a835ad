//! The framing of stream transports: an 8-byte little-endian length, then that many bytes.
//!
//! Eight bytes because messages over 4 GiB are legitimate (a 2 GiB+ array); the length is
//! checked against the receiver's limit before a single byte is reserved for the body.

use super::RecvError;

/// Bytes in a frame header.
pub(crate) const HEADER: usize = 8;

/// The header announcing a body of `len` bytes.
pub(crate) fn header(len: u64) -> [u8; HEADER] {
    len.to_le_bytes()
}

/// The body length a header announces, refused above `limit`.
pub(crate) fn body_len(header: [u8; HEADER], limit: u64) -> Result<u64, RecvError> {
    let len = u64::from_le_bytes(header);
    if len > limit {
        return Err(RecvError::TooLarge { len, limit });
    }
    Ok(len)
}

/// How much to reserve for a body of `len` bytes of which `have` arrived: never more than a
/// bounded step beyond what is really there, so a lying header cannot make us allocate.
pub(crate) fn reserve_step(len: u64, have: usize) -> usize {
    const STEP: u64 = 64 << 20;
    let left = len.saturating_sub(have as u64);
    usize::try_from(left.min(STEP)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_is_checked_against_the_limit() {
        assert_eq!(body_len(header(5), 10).unwrap(), 5);
        assert_eq!(body_len(header(3 << 31), u64::MAX).unwrap(), 3 << 31);
        assert!(matches!(
            body_len(header(11), 10),
            Err(RecvError::TooLarge { len: 11, limit: 10 })
        ));
    }

    #[test]
    fn reservation_grows_in_bounded_steps() {
        assert_eq!(reserve_step(10, 0), 10);
        assert_eq!(reserve_step(u64::MAX, 0), 64 << 20);
        assert_eq!(reserve_step(100, 100), 0);
    }
}

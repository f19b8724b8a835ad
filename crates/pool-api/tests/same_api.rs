//! `Pool` and `ThreadPool` are kept in step here: one macro calls every method of their
//! shared vocabulary (and of their result handles) on both, so a method that one of them
//! lacks, or that takes other arguments, does not compile. A method added to one pool goes
//! into the macro, which then asks for it on the other.

use std::sync::mpsc;
use std::time::Duration;

use pool_api::{Callbacks, Error, Pool, ThreadPool};

const GENEROUS: Duration = Duration::from_secs(20);

macro_rules! every_shared_method {
    ($pool:expr) => {{
        let pool = $pool;
        assert_eq!(pool.processes(), 2);

        assert_eq!(pool.apply(|x: u64| x + 1, 1)?, 2);
        let single = pool.apply_async(|x: u64| x + 1, 1)?;
        single.wait();
        assert!(single.wait_timeout(GENEROUS));
        assert!(single.ready());
        assert!(single.successful()?);
        assert!(!single.cancel(), "a finished task cannot be cancelled");
        assert_eq!(single.get_timeout(GENEROUS)?, 2);
        assert_eq!(pool.apply_async(|x: u64| x + 1, 1)?.get()?, 2);
        let (tx, rx) = mpsc::channel();
        let with = pool.apply_async_with(
            |x: u64| x * 3,
            2,
            Callbacks::none().on_ok(move |v: u64| tx.send(v).unwrap()),
        )?;
        assert_eq!(with.get()?, 6);

        let expected: Vec<u64> = (0..10).map(|x| x * 2).collect();
        assert_eq!(pool.map(|x: u64| x * 2, 0..10)?, expected);
        assert_eq!(pool.map_chunked(|x: u64| x * 2, 0..10, 3)?, expected);
        let pairs: Vec<(u64, u64)> = (0..10).map(|x| (x, x)).collect();
        assert_eq!(
            pool.starmap(|a: u64, b: u64| a + b, pairs.clone())?,
            expected
        );
        assert_eq!(
            pool.starmap_chunked(|a: u64, b: u64| a + b, pairs.clone(), 4)?,
            expected
        );
        let each = pool.map_results(|x: u64| x * 2, 0..10, Some(2))?;
        assert_eq!(each.into_iter().collect::<Result<Vec<_>, _>>()?, expected);

        let many = pool.map_async(|x: u64| x * 2, 0..10, None)?;
        many.wait();
        assert!(many.wait_timeout(GENEROUS));
        assert!(many.ready());
        assert!(many.successful()?);
        assert!(!many.cancel());
        assert_eq!(many.get_timeout(GENEROUS)?, expected);
        let each = pool.map_async(|x: u64| x * 2, 0..10, Some(1))?;
        assert_eq!(each.get_results().len(), 10);
        let (mtx, mrx) = mpsc::channel();
        let many_with = pool.map_async_with(
            |x: u64| x * 2,
            0..10,
            Some(5),
            Callbacks::none().on_ok(move |v: Vec<u64>| mtx.send(v.len()).unwrap()),
        )?;
        assert_eq!(many_with.get()?, expected);
        let star = pool.starmap_async(|a: u64, b: u64| a + b, pairs.clone(), None)?;
        assert_eq!(star.get()?, expected);
        let (stx, srx) = mpsc::channel();
        let star_with = pool.starmap_async_with(
            |a: u64, b: u64| a + b,
            pairs,
            None,
            Callbacks::none().on_err(move |e: Error| stx.send(e).unwrap()),
        )?;
        assert_eq!(star_with.get()?, expected);

        assert_eq!(
            pool.imap(|x: u64| x * 2, 0..10, 2)?
                .with_timeout(GENEROUS)
                .collect::<Result<Vec<_>, _>>()?,
            expected
        );
        let mut unordered = pool
            .imap_unordered(|x: u64| x * 2, 0..10, 2)?
            .collect::<Result<Vec<_>, _>>()?;
        unordered.sort_unstable();
        assert_eq!(unordered, expected);

        pool.close();
        pool.join()?;
        pool.terminate();
        // Callbacks have run once join returned.
        assert_eq!(rx.try_recv().ok(), Some(6));
        assert_eq!(mrx.try_recv().ok(), Some(10));
        assert!(srx.try_recv().is_err(), "no error callback for a success");
    }};
}

#[test]
fn pool_and_thread_pool_have_the_same_vocabulary() -> Result<(), Error> {
    every_shared_method!(Pool::new(2)?);
    every_shared_method!(ThreadPool::new(2)?);
    Ok(())
}

//! A callback lent to whatever a call runs on this thread, for the length of that call: the
//! way code deep inside a library we drive (an HTTP client's transport, which cannot be given
//! arguments of ours) hands something back to the caller while the call is still running.
//! `cached` lends the writer of interim answers (`1xx`) to its origin transport this way, so
//! a `103 Early Hints` reaches the client before the origin's final answer.
//!
//! Must never: let the callback be called after [`lend`] returned (or unwound), or be entered
//! twice at once.

use crate::http::Headers;
use std::cell::Cell;
use std::ptr::NonNull;

/// What is lent: it receives an interim answer's status and fields.
type Sink = dyn FnMut(u16, &Headers);

thread_local! {
    /// The callback lent on this thread now, if any. Its real lifetime is that of the
    /// [`lend`] call that put it here, which takes it out again before it returns.
    static LENT: Cell<Option<NonNull<Sink>>> = const { Cell::new(None) };
}

/// Puts back what was current when dropped, on return and on unwind alike.
struct Restore(Option<NonNull<Sink>>);

impl Drop for Restore {
    fn drop(&mut self) {
        LENT.with(|l| l.set(self.0));
    }
}

/// Runs `body` with `sink` lent to this thread: [`give`] calls it until `body` returns.
pub fn lend<R>(sink: &mut (dyn FnMut(u16, &Headers) + '_), body: impl FnOnce() -> R) -> R {
    let ptr = NonNull::from(sink);
    // SAFETY: only the lifetime bound of the trait object changes (same fat pointer). The
    // pointer is reachable from `LENT` only while this call runs: `Restore` takes it out on
    // every way out of this function, before `sink`'s borrow ends.
    let ptr: NonNull<Sink> = unsafe { std::mem::transmute::<NonNull<_>, NonNull<Sink>>(ptr) };
    let _restore = Restore(LENT.with(|l| l.replace(Some(ptr))));
    body()
}

/// Hands an interim answer to the callback lent on this thread; `false` when none is.
pub fn give(status: u16, headers: &Headers) -> bool {
    let Some(mut ptr) = LENT.with(|l| l.take()) else {
        return false;
    };
    // Out of `LENT` while it runs (a nested `give` finds nothing), back in afterwards.
    let _restore = Restore(Some(ptr));
    // SAFETY: `ptr` came from the `&mut` a running `lend` holds (it is in `LENT` only while
    // that call runs, see `lend`), and it was taken out of `LENT`, so this is the only
    // reference to the callback made from it until `_restore` puts it back.
    let sink = unsafe { ptr.as_mut() };
    sink(status, headers);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lent_callback_is_reachable_only_inside_the_call_and_not_reentrantly() {
        let h: Headers = vec![("Link".into(), b"</a.css>".to_vec())];
        assert!(!give(103, &h), "nothing lent yet");
        let mut got = Vec::new();
        let inner = lend(
            &mut |s, f: &Headers| {
                assert!(!give(102, f), "not re-entered from inside the callback");
                got.push((s, f.len()));
            },
            || {
                assert!(give(103, &h));
                assert!(give(102, &h));
                7
            },
        );
        assert_eq!(inner, 7);
        assert_eq!(got, [(103, 1), (102, 1)]);
        assert!(!give(103, &h), "nothing lent after the call");
        let unwound = std::panic::catch_unwind(|| lend(&mut |_, _: &Headers| {}, || panic!("x")));
        assert!(unwound.is_err());
        assert!(!give(103, &h), "nothing lent after an unwind");
    }

    #[test]
    fn a_nested_lend_shadows_the_outer_one_and_restores_it() {
        let h: Headers = Vec::new();
        let mut outer = 0;
        let mut inner = 0;
        lend(&mut |_, _: &Headers| outer += 1, || {
            give(103, &h);
            lend(&mut |_, _: &Headers| inner += 1, || give(103, &h));
            give(103, &h);
        });
        assert_eq!((outer, inner), (2, 1));
    }
}

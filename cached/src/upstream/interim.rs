//! Interim answers (`1xx`, RFC 9110 §15.2) on their way from an origin to the client. ureq
//! reads and drops them while it waits for the final answer, so the last layer of every
//! server's transport ([`Interim`], above TLS) looks at what arrives while an answer's head is
//! awaited: each complete interim head found there (other than `100 Continue`, which answers
//! our own request, and `101`, which ureq returns and `source::origin` refuses) is handed, as
//! it arrives, to the callback the request lent to this thread (`common::lent`), which writes
//! it to the client's segment. None is ever stored: they never reach `fill`.
//!
//! Why the bytes are seen once each: ureq consumes a complete head before it asks for more
//! input, so when [`Watch::await_input`] returns, the bytes it saw before hold no complete
//! head; a new answer is awaited from each request sent on the connection (`transmit_output`)
//! until the first final head.

use common::http::Headers;
use common::stats::Counters;
use common::stats::StatsRegion;
use std::sync::Arc;
use ureq::unversioned::transport::{Buffers, ConnectionDetails, Connector, NextTimeout, Transport};

/// Fields an interim answer may carry at most (more: not forwarded).
const MAX_FIELDS: usize = 64;

/// The connector layer that wraps each new connection in a [`Watch`].
pub struct Interim {
    /// cached's stats region (`upstream_interim`, `upstream_interim_dropped`).
    pub stats: Arc<StatsRegion>,
}

impl std::fmt::Debug for Interim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interim")
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Watch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("inner", &self.inner)
            .field("awaiting_head", &self.awaiting_head)
            .finish_non_exhaustive()
    }
}

impl<In: Transport> Connector<In> for Interim {
    type Out = Watch<In>;

    fn connect(
        &self,
        _: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Watch<In>>, ureq::Error> {
        Ok(chained.map(|inner| Watch {
            inner,
            awaiting_head: false,
            stats: Arc::clone(&self.stats),
        }))
    }
}

/// A transport that reports the interim heads read through it.
pub struct Watch<T> {
    inner: T,
    /// A request was sent and its final head has not been seen yet.
    awaiting_head: bool,
    stats: Arc<StatsRegion>,
}

impl<T: Transport> Transport for Watch<T> {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.awaiting_head = true;
        self.inner.transmit_output(amount, timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let progress = self.inner.await_input(timeout)?;
        if self.awaiting_head {
            let counters = self.stats.slot(0);
            self.awaiting_head = scan(self.inner.buffers().input(), &mut |status, fields| {
                Counters::inc(&counters.upstream_interim);
                if !common::lent::give(status, &fields) {
                    Counters::inc(&counters.upstream_interim_dropped);
                }
            });
        }
        Ok(progress)
    }

    fn is_open(&mut self) -> bool {
        self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

/// Reports every complete interim head at the start of `input` (`100` excepted); `true`
/// while the final head may still come (the bytes end inside a head), `false` once it is
/// there or the bytes are no HTTP head (ureq reports that).
fn scan(mut input: &[u8], report: &mut dyn FnMut(u16, Headers)) -> bool {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut head = httparse::Response::new(&mut fields);
        let n = match head.parse(input) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return true,
            // Too many fields for us: ureq reads it (and drops it, if it is interim).
            Err(httparse::Error::TooManyHeaders) => return false,
            Err(_) => return false,
        };
        let status = head.code.unwrap_or(0);
        if !(100..200).contains(&status) {
            return false;
        }
        if status != 100 && status != 101 {
            let listed: Vec<String> = head
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("connection"))
                .flat_map(|h| common::http::tokens(h.value))
                .collect();
            let fields = head
                .headers
                .iter()
                .filter(|h| !common::http::is_hop_by_hop(h.name, &listed))
                .map(|h| (h.name.to_string(), h.value.to_vec()))
                .collect();
            report(status, fields);
        }
        input = &input[n..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads(input: &[u8]) -> (Vec<(u16, Headers)>, bool) {
        let mut got = Vec::new();
        let more = scan(input, &mut |s, f| got.push((s, f)));
        (got, more)
    }

    #[test]
    fn interim_heads_are_reported_until_the_final_one() {
        let (got, more) = heads(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nConnection: x-a\r\nX-A: 1\r\n\r\n\
              HTTP/1.1 100 Continue\r\n\r\n\
              HTTP/1.1 102 Processing\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        );
        assert!(!more, "the final head was there");
        assert_eq!(
            got,
            vec![
                (
                    103,
                    vec![("Link".into(), b"</a.css>; rel=preload".to_vec())]
                ),
                (102, vec![])
            ],
            "100 is ours, hop-by-hop fields stay"
        );
    }

    #[test]
    fn a_head_cut_short_waits_for_more_and_body_bytes_are_never_read_as_heads() {
        assert_eq!(heads(b"HTTP/1.1 103 Early"), (vec![], true));
        assert_eq!(heads(b""), (vec![], true));
        let (got, more) = heads(b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 20");
        assert_eq!((got.len(), more), (1, true));
        assert_eq!(
            heads(b"HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 103 x\r\n\r\n"),
            (vec![], false)
        );
        assert_eq!(heads(b"garbage\r\n\r\n"), (vec![], false));
    }
}

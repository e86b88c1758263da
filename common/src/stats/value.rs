//! What the slot's fields and the sites/servers tables share, so that both use it without
//! importing each other: a field's kind, the FNV-1a hash their layout versions are made of,
//! the relaxed updates of a counter or gauge, and how a value is written (JSON, Prometheus).

use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    Counter,
    Gauge,
}

/// FNV-1a (32 bits) of `bytes`, continuing from `h`.
pub const fn fnv1a(mut h: u32, bytes: &[u8]) -> u32 {
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u32;
        h = h.wrapping_mul(0x0100_0193);
        i += 1;
    }
    h
}

/// `fnv1a` of a number's little-endian bytes.
pub const fn fnv1a_usize(h: u32, n: usize) -> u32 {
    fnv1a(h, &(n as u64).to_le_bytes())
}

/// A field's name and kind, then a separator (so `ab`,`c` and `a`,`bc` differ).
pub const fn fnv1a_field(h: u32, name: &str, kind: FieldKind) -> u32 {
    fnv1a(fnv1a(h, name.as_bytes()), &[kind as u8, 0])
}

/// Adds `n` to a counter or gauge (every field is updated relaxed: the sum over slots is read).
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Adds one to a counter or gauge.
pub fn inc(c: &AtomicU64) {
    add(c, 1);
}

/// Gauges go down by wrapping subtraction; the sum over slots is what is read.
pub fn dec(c: &AtomicU64) {
    c.fetch_sub(1, Ordering::Relaxed);
}

/// A JSON number for a field's value: counters as they are, gauges as signed (a gauge's
/// wrapping sum can be read between an increment and its decrement).
pub fn json_value(kind: FieldKind, v: u64) -> Value {
    match kind {
        FieldKind::Counter => Value::from(v),
        FieldKind::Gauge => Value::from(v as i64),
    }
}

/// HELP text: backslashes and line feeds escaped.
pub fn prom_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Label value: backslashes, double quotes and line feeds escaped.
pub fn prom_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

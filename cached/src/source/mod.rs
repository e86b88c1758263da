//! The sources an answer is fetched from: the document root ([`disk`]) or the sites'
//! origin servers ([`origin`], through `crate::upstream`). They fetch and report what they
//! found or why they failed (`crate::error::SourceError`); the cache phase is decided in
//! `crate::phase` and carried out by `crate::serve` and the modules it calls.

pub mod disk;
pub mod origin;

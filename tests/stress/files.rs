//! The document root the stress run serves: files of fixed sizes (0 B to 16 MiB) plus, per pool
//! shape, files straddling the segment size. Contents are deterministic pseudo-random bytes
//! seeded by the file's name, so two files never share a body and a mixed-up answer is caught
//! by its SHA-256.

use sha2::{Digest, Sha256};
use std::fs;
use std::io;
use std::path::Path;

/// A file the clients fetch (or, for the missing one, expect a 404 for).
#[derive(Clone, Debug)]
pub struct Doc {
    /// URL path, e.g. `/f-1048576.bin`.
    pub url: String,
    /// Expected status: 200, or 404 for the missing file.
    pub status: u16,
    /// Expected body length (200 only).
    pub len: u64,
    /// Expected body SHA-256 (200 only).
    pub sha256: [u8; 32],
    /// Relative frequency in the random mix.
    pub weight: u32,
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Fixed sizes and their weight in the mix: small files are common, big ones rare.
const BASE_FILES: &[(u64, u32)] = &[
    (0, 3),
    (1, 3),
    (1000, 6),
    (4 * KIB, 6),
    (64 * KIB + 3, 4),
    (MIB, 2),
];
/// The biggest file; its weight is the caller's.
const HUGE_FILE: u64 = 16 * MIB;

/// Weight of each segment-boundary file (size − 1, size, size + 1).
const EDGE_WEIGHT: u32 = 2;
/// Weight of the missing file.
const MISSING_WEIGHT: u32 = 2;

/// Writes the fixed-size files into `root` and returns them; the 16 MiB one gets `huge_weight`
/// (0: only fetched by the pass that covers every file once).
pub fn base_docs(root: &Path, huge_weight: u32) -> io::Result<Vec<Doc>> {
    let huge = [(HUGE_FILE, huge_weight)];
    BASE_FILES
        .iter()
        .chain(&huge)
        .map(|&(len, weight)| write_doc(root, &format!("f-{len}.bin"), len, weight))
        .collect()
}

/// Writes `segment_size − 1`, `segment_size` and `segment_size + 1` byte files into
/// `root/edge-<segment_size>/` and returns them together with the missing file.
pub fn shape_docs(root: &Path, segment_size: u64) -> io::Result<Vec<Doc>> {
    let dir = format!("edge-{segment_size}");
    fs::create_dir_all(root.join(&dir))?;
    let mut docs = Vec::new();
    for len in [segment_size - 1, segment_size, segment_size + 1] {
        docs.push(write_doc(
            root,
            &format!("{dir}/e-{len}.bin"),
            len,
            EDGE_WEIGHT,
        )?);
    }
    docs.push(missing_doc(&dir));
    Ok(docs)
}

/// Sizes of the chaos mix (0 B to 4 MiB) and their weight: small files are common, big ones
/// rare; the segment-boundary files and the missing file come from [`shape_docs`].
const CHAOS_FILES: &[(u64, u32)] = &[
    (0, 2),
    (1, 2),
    (1000, 6),
    (4 * KIB, 6),
    (256 * KIB + 5, 3),
    (MIB, 2),
    (4 * MIB, 1),
];

/// The chaos run's files: 0 B to 4 MiB, the files straddling `segment_size` and a missing one.
pub fn chaos_docs(root: &Path, segment_size: u64) -> io::Result<Vec<Doc>> {
    fs::create_dir_all(root.join("chaos"))?;
    let mut docs = CHAOS_FILES
        .iter()
        .map(|&(len, weight)| write_doc(root, &format!("chaos/c-{len}.bin"), len, weight))
        .collect::<io::Result<Vec<Doc>>>()?;
    docs.extend(shape_docs(root, segment_size)?);
    Ok(docs)
}

/// A path that does not exist under the root.
fn missing_doc(dir: &str) -> Doc {
    Doc {
        url: format!("/{dir}/no-such-file.bin"),
        status: 404,
        len: 0,
        sha256: [0; 32],
        weight: MISSING_WEIGHT,
    }
}

/// Writes one file of `len` deterministic bytes at `root/rel` and describes it.
fn write_doc(root: &Path, rel: &str, len: u64, weight: u32) -> io::Result<Doc> {
    let body = contents(rel, len);
    fs::write(root.join(rel), &body)?;
    Ok(Doc {
        url: format!("/{rel}"),
        status: 200,
        len,
        sha256: Sha256::digest(&body).into(),
        weight,
    })
}

/// `len` pseudo-random bytes (splitmix64) seeded by a hash of `name`.
fn contents(name: &str, len: u64) -> Vec<u8> {
    let mut rng = SplitMix64(fnv1a(name.as_bytes()));
    let mut out = Vec::with_capacity(len as usize);
    while (out.len() as u64) < len {
        let word = rng.next().to_le_bytes();
        let take = (len as usize - out.len()).min(word.len());
        out.extend_from_slice(&word[..take]);
    }
    out
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A small, fast, deterministic PRNG (also used to pick requests).
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (n > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

//! Build script of `proxy` and `cached` (both name this file as `build`): embeds the git
//! commit the binary is built from as `SHMPROXY_GIT_COMMIT`, for `--version`.
//!
//! It runs `git rev-parse --short HEAD` once per build that needs it: cargo reruns it only when
//! `HEAD` or the branch it points to moves (or `SHMPROXY_GIT_COMMIT` is set at build time,
//! which wins: packagers building from a tarball pass the commit that way). Without git or
//! outside a checkout (a `cargo install` from a copied tree) the commit is "unknown".

use std::path::Path;
use std::process::Command;

/// `git ARGS` in the package directory: its trimmed stdout, or `None` when git is missing,
/// fails, or prints nothing.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=SHMPROXY_GIT_COMMIT");
    // A file named here that does not exist would make cargo rerun the script every build.
    println!("cargo:rerun-if-changed=../build/git_commit.rs");
    if let Ok(c) = std::env::var("SHMPROXY_GIT_COMMIT") {
        println!("cargo:rustc-env=SHMPROXY_GIT_COMMIT={c}");
        return;
    }
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    if commit.is_some() {
        // HEAD moves on checkout; the branch's ref (loose or packed) on commit.
        let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
        if let Some(r) = git(&["rev-parse", "--symbolic-full-name", "HEAD"]) {
            watch.push(r);
        }
        for w in watch {
            if let Some(p) = git(&["rev-parse", "--git-path", &w]) {
                if Path::new(&p).exists() {
                    println!("cargo:rerun-if-changed={p}");
                }
            }
        }
    }
    let commit = commit.unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=SHMPROXY_GIT_COMMIT={commit}");
}

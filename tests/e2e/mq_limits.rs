//! The request queue is a doorbell sized to fit the limits of an unprivileged user
//! (`fs.mqueue.msg_max` 10, `RLIMIT_MSGQUEUE` 819,200 bytes): 24 instances, each with its own
//! queue, are alive at once and all serve. With 10 × 8 KiB messages per queue only 9 would fit.

use shmproxy_tests::harness::{with_deadline, write_file, Instance};
use std::time::Duration;

const INSTANCES: usize = 24;

#[test]
fn two_dozen_instances_alive_at_once() {
    with_deadline(Duration::from_secs(240), || {
        let roots: Vec<tempfile::TempDir> = (0..INSTANCES)
            .map(|i| {
                let r = tempfile::tempdir().unwrap();
                write_file(
                    r.path(),
                    "id.txt",
                    format!("instance number {i}\n").as_bytes(),
                );
                r
            })
            .collect();
        let mut all: Vec<Instance> = roots
            .iter()
            .map(|r| {
                Instance::builder()
                    .root(r.path())
                    .segments(2)
                    .segment_size(4096)
                    .workers(1)
                    .threads(2)
                    .cached_threads(2)
                    .build()
            })
            .collect();
        // Start every cached first, so all queues exist before any proxy rings one.
        for inst in &mut all {
            inst.spawn_cached();
        }
        for inst in &mut all {
            inst.start_proxy();
        }
        for inst in &mut all {
            inst.wait_cached_ready();
        }
        for (i, inst) in all.iter_mut().enumerate() {
            assert!(inst.mq_exists(), "instance {i}: no queue");
            assert!(
                inst.cached_alive(),
                "instance {i}: cached died\n{}",
                inst.logs()
            );
            let r = inst.get("/id.txt");
            assert_eq!(
                r.status,
                200,
                "instance {i}: {}\n{}",
                r.describe(),
                inst.logs()
            );
            assert_eq!(r.text(), format!("instance number {i}\n"), "instance {i}");
        }
        // Once more, now that every instance has been used: none disturbed another.
        for (i, inst) in all.iter().enumerate() {
            assert_eq!(inst.get("/id.txt").text(), format!("instance number {i}\n"));
        }
        drop(all);
    });
}

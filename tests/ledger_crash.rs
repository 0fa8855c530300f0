//! Crash tests: a child process records passes from 16 concurrent lanes and prints each seq
//! only after `append` returned (the moment the lane would send the barrier command). The
//! parent SIGKILLs it at a random point, reopens the ledger, verifies the chain and checks that
//! every printed seq is there.
//!
//! `LEDGER_CRASH_ITERATIONS` sets the number of kills; the default is the acceptance value,
//! 200 (about 45 s in a debug build on the 2-core machine); set it lower for a quick run.

mod ledger_support;

use bytes::Bytes;
use ecogate::ledger::{verify, Direction, Ledger, LedgerReader, DB_FILE};
use ledger_support::{at, pass, Rng};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "LEDGER_CRASH_CHILD_DIR";

/// Not a test of its own: the body of the child process, which the crash test starts as
/// `<this binary> --ignored --exact crash_child_helper` with `LEDGER_CRASH_CHILD_DIR` set.
#[test]
#[ignore = "child process of the crash test"]
fn crash_child_helper() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let ledger = Ledger::open(Path::new(&dir)).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut tasks = Vec::new();
        for lane in 0..16 {
            let ledger = ledger.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0u64.. {
                    let photos = if i % 4 == 0 {
                        vec![Bytes::from(format!(
                            "lane {lane} photo {i} {:?}",
                            Instant::now()
                        ))]
                    } else {
                        vec![]
                    };
                    let dir = if i % 2 == 0 {
                        Direction::In
                    } else {
                        Direction::Out
                    };
                    let r = ledger
                        .append(
                            pass(&format!("{lane}-in"), &format!("豫A{lane:02}{i:03}"), dir),
                            photos,
                            at(i as i64),
                        )
                        .await
                        .unwrap();
                    // The barrier command "goes out" here.
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "SEQ {};", r.seq).unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

#[test]
fn sigkill_at_random_points_loses_no_recorded_pass() {
    let iterations: u64 = std::env::var("LEDGER_CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut rng = Rng::from_env_or_time("crash");
    let exe = std::env::current_exe().unwrap();
    let mut tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut total_confirmed = 0usize;
    for it in 0..iterations {
        // Keep crashing into the same ledger for a while (recovery on top of recovery), then
        // start a fresh one so verify stays quick.
        if it % 25 == 0 && it > 0 {
            tmp = tempfile::tempdir().unwrap();
        }
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "crash_child_helper",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut seqs = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Only complete lines count: a line cut by the kill was never "sent".
                if let Some(n) = line.strip_prefix("SEQ ").and_then(|s| s.strip_suffix(';')) {
                    seqs.push(n.parse::<i64>().unwrap());
                }
            }
            seqs
        });
        std::thread::sleep(Duration::from_millis(rng.range(5, 150)));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        let confirmed = reader.join().unwrap();
        total_confirmed += confirmed.len();

        if confirmed.is_empty() && !tmp.path().join(DB_FILE).exists() {
            // Killed before the child created the ledger: nothing was recorded, nothing to check.
            continue;
        }
        let report = verify(tmp.path()).unwrap();
        assert!(report.ok(), "iteration {it}: {report}");
        let reader = LedgerReader::open(tmp.path()).unwrap();
        for seq in &confirmed {
            assert!(
                reader.event(*seq).unwrap().is_some(),
                "iteration {it}: pass seq {seq} was confirmed before the kill but is missing"
            );
        }
        if let Some(max) = confirmed.iter().max() {
            assert!(report.head.seq >= *max);
        }
        // The ledger stays writable after the crash.
        let ledger = Ledger::open(tmp.path()).unwrap();
        let r = ledger
            .append_blocking(pass("check", "豫Z00000", Direction::In), vec![], at(0))
            .unwrap();
        assert_eq!(r.seq, report.head.seq + 1);
    }
    eprintln!(
        "{iterations} kills, {total_confirmed} confirmed passes, {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// A writer killed while SQLite was still creating the file (before the switch to WAL) leaves a
/// hot rollback journal. A read-only open cannot roll it back (SQLITE_READONLY_ROLLBACK), so
/// `verify` and the reader must recover it first instead of failing. The hot journal is made
/// here by copying the files out from under an open write transaction whose pages spilled.
#[test]
fn verify_recovers_a_hot_rollback_journal_left_by_a_crash() {
    let live = tempfile::tempdir().unwrap();
    {
        let ledger = Ledger::open(live.path()).unwrap();
        ledger
            .append_blocking(pass("l1", "豫A12345", Direction::In), vec![], at(0))
            .unwrap();
    }
    let db = live.path().join(DB_FILE);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    conn.execute_batch(
        "PRAGMA cache_size=1; BEGIN; CREATE TABLE filler(x BLOB); \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 200) \
         INSERT INTO filler SELECT randomblob(4000) FROM n;",
    )
    .unwrap();
    let crashed = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(crashed.path().join("photos")).unwrap();
    std::fs::copy(&db, crashed.path().join(DB_FILE)).unwrap();
    let journal = live.path().join(format!("{DB_FILE}-journal"));
    assert!(
        journal.exists(),
        "the transaction spilled into a rollback journal"
    );
    std::fs::copy(&journal, crashed.path().join(format!("{DB_FILE}-journal"))).unwrap();
    conn.execute_batch("ROLLBACK").unwrap();

    let report = verify(crashed.path()).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.head.seq, 1);
    let reader = LedgerReader::open(crashed.path()).unwrap();
    assert!(reader.event(1).unwrap().is_some());
}

//! A careless operator's mistakes, tried on the real binary: two processes
//! on one checkpoint directory, SIGHUP, a broker address where nothing
//! listens. None of these needs Kafka to answer: nothing listens on
//! 127.0.0.1:1.

mod common;

use std::time::Duration;

use common::{Service, http_get, metric, unique, wait_for};

const WAIT: Duration = Duration::from_secs(60);
const DEAD_BROKER: &str = "127.0.0.1:1";

fn temp_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(unique(name))
}

fn serving(service: &Service) {
    let addr = service.addr;
    wait_for("ipstats to answer /healthz", WAIT, || {
        match http_get(addr, "/healthz") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}

#[test]
fn a_second_process_on_one_checkpoint_directory_exits_1_naming_it_and_the_holder() {
    let dir = temp_dir("shared-ckpt");
    let dir_arg = dir.to_str().expect("utf-8 path");
    let args = ["--brokers", DEAD_BROKER, "--checkpoint-dir", dir_arg];
    let mut first = Service::spawn(&args);
    serving(&first);

    let mut second = Service::spawn(&args);
    let status = second.wait_exit(WAIT);
    let log = second.log_text();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(dir_arg) && log.contains(&format!("pid {}", first.child.id())),
        "{log}"
    );
    assert!(
        !log.contains("ipstats started"),
        "refused before serving: {log}"
    );

    // SIGKILL: the kernel releases the lock with the process.
    first.child.kill().expect("kill");
    first.child.wait().expect("reap");
    let third = Service::spawn(&args);
    serving(&third);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sighup_is_answered_and_the_service_keeps_running() {
    let dir = temp_dir("hup-ckpt");
    let mut service = Service::spawn(&[
        "--brokers",
        DEAD_BROKER,
        "--checkpoint-dir",
        dir.to_str().expect("utf-8 path"),
    ]);
    serving(&service);
    service.signal("HUP");
    wait_for("the SIGHUP to be answered", WAIT, || {
        let log = service.log_text();
        if log.contains("SIGHUP received") {
            Ok(())
        } else {
            Err(log)
        }
    });
    assert!(
        service.child.try_wait().expect("status").is_none(),
        "still running"
    );
    assert_eq!(http_get(service.addr, "/healthz").expect("healthz").0, 200);
    service.signal("TERM");
    let status = service.wait_exit(WAIT);
    assert!(status.success(), "{status}: {}", service.log_text());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_dead_broker_is_not_ready_and_its_errors_do_not_flood_the_log() {
    let dir = temp_dir("dead-ckpt");
    // Reconnecting at least once a second: a flood of errors within the wait.
    let service = Service::spawn(&[
        "--brokers",
        DEAD_BROKER,
        "--checkpoint-dir",
        dir.to_str().expect("utf-8 path"),
        "--kafka-config",
        "reconnect.backoff.max.ms=1000",
    ]);
    serving(&service);
    // Every refused connection is still counted: wait for many.
    wait_for("Kafka errors to pile up", WAIT, || {
        match metric(service.addr, "ipstats_kafka_errors_total") {
            Some(n) if n >= 40.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let (code, body) = http_get(service.addr, "/readyz").expect("readyz");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("waiting for the Kafka cluster to answer"),
        "{body}"
    );
    let log = service.log_text();
    let noisy = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .count();
    assert!(noisy <= 12, "{noisy} warnings and errors:\n{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

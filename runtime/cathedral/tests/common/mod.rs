//! Shared by the binary's integration tests: the executable, and a
//! `cathedral serve` child whose JSON log lines are read on a thread.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cathedral_e2e::PATIENCE;

pub fn cathedral() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cathedral"))
}

/// A `cathedral serve` child whose JSON log lines are read on a thread.
pub struct Served {
    pub child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
}

impl Served {
    pub fn start(args: &[&str], dir: Option<&Path>) -> Self {
        let mut cmd = cathedral();
        cmd.arg("serve").args(args).args(["--log-format", "json"]);
        if let Some(d) = dir {
            cmd.current_dir(d);
        }
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        Served { child, lines: rx }
    }

    /// Waits for a log line whose message is `message`.
    pub fn wait_for(&self, message: &str) -> serde_json::Value {
        loop {
            let v = self.lines.recv_timeout(PATIENCE).expect("log line in time");
            if v["message"] == message {
                return v;
            }
        }
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "cathedral did not exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

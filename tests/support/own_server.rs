//! A broker process of the test's own, on a free loopback port, for tests that need a
//! broker configured differently from the project's instances (a password, a token):
//! started from the Debian-installed program, watched until it says it is ready, and
//! stopped by its PID when dropped.

#![allow(dead_code)] // each test target uses a different part

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where a program says it is ready.
#[derive(Debug, Clone, Copy)]
pub enum Log {
    Stdout,
    Stderr,
}

/// A running server of the test's own.
#[derive(Debug)]
pub struct OwnServer {
    child: Child,
    port: u16,
}

/// A free loopback port (the listener is closed again at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

impl OwnServer {
    /// Runs `program` with `args`, which make it listen on `port`, and waits (at most
    /// `wait`) until a line of its `log` contains `ready`; fails the test, naming the
    /// package to install or the server's output, otherwise.
    pub async fn start(
        program: &str,
        package: &str,
        port: u16,
        args: Vec<String>,
        log: Log,
        ready: &'static str,
        wait: Duration,
    ) -> OwnServer {
        let (stdout, stderr) = match log {
            Log::Stdout => (Stdio::piped(), Stdio::null()),
            Log::Stderr => (Stdio::null(), Stdio::piped()),
        };
        let mut child = Command::new(program)
            .args(&args)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} (apt-get install {package}): {e}"));
        let output: Box<dyn std::io::Read + Send> = match log {
            Log::Stdout => Box::new(child.stdout.take().expect("piped stdout")),
            Log::Stderr => Box::new(child.stderr.take().expect("piped stderr")),
        };
        let server = OwnServer { child, port };
        let watching = tokio::task::spawn_blocking(move || {
            let mut seen = String::new();
            let mut lines = std::io::BufReader::new(output).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if line.contains(ready) {
                    // Keep reading: a server writing to a full or closed pipe blocks or
                    // dies (Go programs such as nats-server die).
                    std::thread::spawn(move || lines.for_each(drop));
                    return Ok(());
                }
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(seen)
        });
        match tokio::time::timeout(wait, watching).await {
            Ok(Ok(Ok(()))) => server,
            Ok(Ok(Err(log))) => panic!("{program} {args:?} exited:\n{log}"),
            Ok(Err(e)) => panic!("watching {program} failed: {e}"),
            Err(_) => panic!("{program} {args:?} not ready within {wait:?}"),
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the process (SIGSTOP) until [`OwnServer::resume`] or its drop (SIGKILL
    /// ends a stopped process too): it keeps its connections open and answers nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args([which, &pid])
            .status()
            .unwrap_or_else(|e| panic!("kill {which} {pid}: {e}"));
        assert!(status.success(), "kill {which} {pid} failed");
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An error, its `Debug`, and every error of its source chain, as text: what a log
/// could show of it.
pub fn everything_shown(err: &tower_mq::Error) -> String {
    let mut shown = format!("{err}\n{err:?}");
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        shown.push_str(&format!("\n{inner}\n{inner:?}"));
        source = inner.source();
    }
    shown
}

/// `err`, from a connect to `127.0.0.1:port` where nothing listens, is what it should
/// be: transient, from the connect, naming the address and showing nothing of `secret`.
pub fn assert_unreachable_and_masked(err: &tower_mq::Error, port: u16, secret: &str) {
    let shown = everything_shown(err);
    assert_eq!(err.kind(), tower_mq::ErrorKind::Transient, "{shown}");
    assert_eq!(err.operation(), tower_mq::Operation::Connect);
    assert!(shown.contains(&format!("127.0.0.1:{port}")), "{shown}");
    assert!(!shown.contains(secret), "{shown}");
}

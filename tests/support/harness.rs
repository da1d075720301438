//! The project's broker instances as every test target reaches them: each broker's
//! address (its `TOWER_MQ_*` variable, or the harness's default), a connect that fails
//! the test saying which variable and how to start the broker, the harness script that
//! stops and starts them, and names no other test (or test run) uses on them.

#![allow(dead_code)] // each test target uses a different part

/// A name no other test (or test run) uses: `tmq-<what>-<pid>-<nanos>-<n>`, letters,
/// digits and `-` around `what`, so every broker takes it for a queue, stream, subject
/// or topic.
pub fn unique(what: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "tmq-{what}-{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `"$TOWER_MQ_BROKERS" <action> <broker>` (`stop`, `start`, `restart`, `pause`,
/// `resume`), failing the test when the variable is not set or the script fails.
pub async fn run(action: &str, broker: &str) {
    let script = std::env::var("TOWER_MQ_BROKERS").unwrap_or_else(|_| {
        panic!(
            "TOWER_MQ_BROKERS is not set: this test runs \"$TOWER_MQ_BROKERS\" {action} {broker}. \
             Run scripts/test, or scripts/brokers up {broker} and eval \"$(scripts/brokers env)\"."
        )
    });
    let status = tokio::process::Command::new(&script)
        .args([action, broker])
        .status()
        .await
        .unwrap_or_else(|e| panic!("running `{script} {action} {broker}` failed: {e}"));
    assert!(
        status.success(),
        "`{script} {action} {broker}` exited with {status}"
    );
}

/// The variable `name`, which the test needs set (`scripts/test` and
/// `scripts/brokers env` set it).
pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run scripts/test, or eval \"$(scripts/brokers env)\"")
    })
}

/// The variable `name`, or `default` (the harness's) when it is not set.
fn address(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[cfg(feature = "rabbitmq")]
pub mod rabbitmq {
    use tower_mq::rabbitmq::{Config, Connection};

    /// The broker's URL: `TOWER_MQ_AMQP_URL`, or the harness's.
    pub fn url() -> String {
        super::address(
            "TOWER_MQ_AMQP_URL",
            "amqp://guest:guest@127.0.0.1:15673/%2f",
        )
    }

    /// Fails the test: RabbitMQ did not answer (`err`), and how to start it.
    pub fn unreachable(err: impl std::fmt::Display) -> ! {
        panic!(
            "RabbitMQ is not reachable at {} (env TOWER_MQ_AMQP_URL): {err}. \
             Run scripts/test, or scripts/brokers up rabbitmq.",
            url()
        )
    }

    /// A tower-mq connection with `config`, which should reach the project's broker.
    pub async fn connect(config: Config) -> Connection {
        Connection::connect(&config)
            .await
            .unwrap_or_else(|err| unreachable(err))
    }
}

#[cfg(feature = "redis")]
pub mod redis {
    use tower_mq::redis::Config;

    /// The server's URL: `TOWER_MQ_REDIS_URL`, or the harness's.
    pub fn url() -> String {
        super::address("TOWER_MQ_REDIS_URL", "redis://127.0.0.1:16379")
    }

    /// Fails the test: Redis did not answer (`err`), and how to start it.
    pub fn unreachable(err: impl std::fmt::Display) -> ! {
        panic!(
            "Redis is not reachable at {} (env TOWER_MQ_REDIS_URL): {err}. \
             Run scripts/test, or scripts/brokers up redis.",
            url()
        )
    }

    /// The config for the project's server, once the server answered.
    pub async fn config() -> Config {
        let config = Config::new(url());
        if let Err(err) = config.connect().await {
            unreachable(err)
        }
        config
    }
}

#[cfg(feature = "nats")]
pub mod nats {
    use tower_mq::nats::{Config, Connection};

    /// The server's URL: `TOWER_MQ_NATS_URL`, or the harness's.
    pub fn url() -> String {
        super::address("TOWER_MQ_NATS_URL", "nats://127.0.0.1:14222")
    }

    /// Fails the test: NATS did not answer (`err`), and how to start it.
    pub fn unreachable(err: impl std::fmt::Display) -> ! {
        panic!(
            "NATS is not reachable at {} (env TOWER_MQ_NATS_URL): {err}. \
             Run scripts/test, or scripts/brokers up nats.",
            url()
        )
    }

    /// A tower-mq connection with `config`, which should reach the project's server.
    pub async fn connect(config: Config) -> Connection {
        Connection::connect(&config)
            .await
            .unwrap_or_else(|err| unreachable(err))
    }
}

#[cfg(feature = "kafka")]
pub mod kafka {
    use std::time::Duration;

    use tower_mq::kafka::{Config, Publisher};

    /// The bootstrap servers: `TOWER_MQ_KAFKA_BROKERS`, or the harness's tansu.
    pub fn brokers() -> String {
        super::address("TOWER_MQ_KAFKA_BROKERS", "127.0.0.1:19092")
    }

    /// The config for the project's broker, once the broker answered: one record per
    /// batch (tansu 0.6.0 skips the rest of a batch when a fetch starts in its middle),
    /// quick reconnects and group sessions.
    pub async fn config() -> Config {
        let brokers = brokers();
        let config = Config::new(&brokers)
            .batch_messages(1)
            .set("reconnect.backoff.max.ms", "100")
            .set_consumer("session.timeout.ms", "6000")
            .set_consumer("heartbeat.interval.ms", "500")
            .operation_timeout(Duration::from_secs(5));
        if let Err(e) = Publisher::connect(&config).await {
            panic!(
                "kafka: cannot reach a Kafka broker at {brokers} (set TOWER_MQ_KAFKA_BROKERS; \
                 run scripts/test or scripts/brokers up kafka): {e}"
            );
        }
        config
    }
}

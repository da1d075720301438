//! The connection to NATS that every service shares: connecting, reconnecting with
//! jittered backoff, and the readiness the services report while it is down.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::watch;
use tower_mq_core::{Error, ErrorKind, Operation};
use tower_mq_layers::retry::{Backoff, FastRng};

use super::config::{Auth, Config};
use super::{confirm, BROKER};
use crate::connect_retry::ReconnectBackoff;
use crate::redact;

/// A connection to NATS, shared (cheaply cloned) by every service built on it.
///
/// See the [module docs](super) for what happens while it reconnects.
#[derive(Clone)]
pub struct Connection {
    // One allocation shared by every clone: services clone the connection per call.
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    connected: watch::Receiver<Link>,
    config: Config,
    confirmer: confirm::Confirmer,
}

/// The connection's state as the services see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    Up,
    Down,
    Closed,
}

impl Connection {
    /// Connects to the server(s) in `config`.
    ///
    /// Fails if no server can be reached now (a transient error; see
    /// [`Config::connect_retry`] to wait for one), or if the address or credentials are
    /// wrong (permanent). Once connected, the client reconnects by itself.
    pub async fn connect(config: &Config) -> Result<Self, Error> {
        let redacted_url = config.redacted_url();
        let (client, connected) = crate::connect_retry::connect(
            config.connect_retry,
            config.reconnect_backoff,
            &redacted_url,
            || connect_once(config, &redacted_url),
        )
        .await?;
        tracing::debug!(target: "tower_mq::nats", url = %redacted_url, "connected");
        Ok(Connection {
            inner: Arc::new(Inner {
                confirmer: confirm::Confirmer::new(
                    client.clone(),
                    connected.clone(),
                    config.request_timeout,
                ),
                client,
                connected,
                config: config.clone(),
            }),
        })
    }

    /// The underlying async-nats client, for what this module does not cover.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// Whether the client is connected right now.
    pub fn is_connected(&self) -> bool {
        *self.inner.connected.borrow() == Link::Up
    }

    /// The configuration the connection was made with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// How many times a connection was established (the first one included).
    pub(crate) fn connects(&self) -> u64 {
        self.inner
            .client
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until the server processed everything this connection sent so far (one
    /// round trip shared by every caller waiting at the same time).
    pub(crate) async fn processed(&self) -> Result<(), confirm::Failure> {
        self.inner.confirmer.confirm().await
    }

    /// Changes of the connection's state, from now on.
    pub(crate) fn link_changes(&self) -> tokio_stream::wrappers::WatchStream<Link> {
        tokio_stream::wrappers::WatchStream::from_changes(self.inner.connected.clone())
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.inner.config.redacted_url())
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// One attempt at connecting: the client and its connection state.
async fn connect_once(
    config: &Config,
    redacted_url: &str,
) -> Result<(async_nats::Client, watch::Receiver<Link>), Error> {
    let (state_tx, connected) = watch::channel(Link::Down);
    let state_tx = Arc::new(state_tx);
    let ReconnectBackoff {
        min: min_delay,
        max: max_delay,
    } = config.reconnect_backoff;
    let mut options = async_nats::ConnectOptions::new()
        .client_capacity(config.client_capacity)
        .subscription_capacity(config.subscription_capacity)
        .connection_timeout(config.connection_timeout)
        .request_timeout(Some(config.request_timeout))
        .ping_interval(config.ping_interval)
        .max_reconnects(config.max_reconnects)
        .reconnect_delay_callback({
            let rng = FastRng::new();
            move |attempts| reconnect_delay(attempts, min_delay, max_delay, &rng)
        })
        .event_callback({
            let state_tx = state_tx.clone();
            move |event| {
                on_event(&state_tx, &event);
                async {}
            }
        });
    if let Some(name) = &config.name {
        options = options.name(name);
    }
    if let Some(prefix) = &config.inbox_prefix {
        options = options.custom_inbox_prefix(prefix);
    }
    // The client is given the URLs without credentials, so it cannot log them;
    // the credentials travel in the options.
    let (servers, url_auth) = servers_and_credentials(&config.url);
    if servers.is_empty() {
        // Nothing to try, now or later: a configuration error, not an outage.
        return Err(Error::permanent(BROKER, Operation::Connect)
            .with_destination(redacted_url.to_owned())
            .with_reason("the URL names no server"));
    }
    let auth = match &config.auth {
        Auth::None => url_auth,
        set => set.clone(),
    };
    let options = authenticate(options, auth, redacted_url).await?;
    let client = options.connect(servers).await.map_err(|err| {
        let kind = match err.kind() {
            async_nats::ConnectErrorKind::TimedOut
            | async_nats::ConnectErrorKind::Io
            | async_nats::ConnectErrorKind::Dns => ErrorKind::Transient,
            _ => ErrorKind::Permanent,
        };
        let error =
            Error::new(BROKER, Operation::Connect, kind).with_destination(redacted_url.to_owned());
        let error = match err.kind() {
            async_nats::ConnectErrorKind::AuthorizationViolation
            | async_nats::ConnectErrorKind::Authentication => {
                error.with_reason("the server refused the credentials")
            }
            _ => error,
        };
        error.with_source(err)
    })?;
    if client.connection_state() == async_nats::connection::State::Connected {
        state_tx.send_replace(Link::Up);
    }
    Ok((client, connected))
}

/// The server URLs of a comma-separated list, without credentials, and the
/// credentials the first URL holding any carries (`user:password@`, or a lone
/// `token@`), percent-decoded.
fn servers_and_credentials(urls: &str) -> (Vec<String>, Auth) {
    let mut auth = Auth::None;
    let servers = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| match redact::split(url) {
            Some((head, info, tail)) => {
                if auth == Auth::None {
                    let user = redact::percent_decode(info.user);
                    auth = match info.password {
                        Some(password) => Auth::UserAndPassword {
                            user,
                            password: redact::percent_decode(password),
                        },
                        None if !user.is_empty() => Auth::Token(user),
                        None => Auth::None,
                    };
                }
                format!("{head}{tail}")
            }
            None => url.to_owned(),
        })
        .collect();
    (servers, auth)
}

/// `options` with the credentials of `auth`.
async fn authenticate(
    options: async_nats::ConnectOptions,
    auth: Auth,
    redacted_url: &str,
) -> Result<async_nats::ConnectOptions, Error> {
    Ok(match auth {
        Auth::None => options,
        Auth::UserAndPassword { user, password } => options.user_and_password(user, password),
        Auth::Token(token) => options.token(token),
        Auth::Nkey(seed) => options.nkey(seed),
        Auth::CredentialsFile(path) => {
            options.credentials_file(&path).await.map_err(|err| {
                // The file's contents are secret; its path is not.
                Error::permanent(BROKER, Operation::Connect)
                    .with_destination(redacted_url.to_owned())
                    .with_reason(format!(
                        "cannot use the credentials file `{}`: {}",
                        path.display(),
                        err.kind()
                    ))
            })?
        }
    })
}

/// The delay before reconnect attempt number `attempts`: none before the first, then a
/// jittered exponential backoff, so that clients that lost one server do not all come
/// back at the same instant: up to `min` before the second, doubling up to `max`.
fn reconnect_delay(attempts: usize, min: Duration, max: Duration, rng: &FastRng) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let retry = u32::try_from(attempts - 2).unwrap_or(u32::MAX);
    Backoff::exponential(min, max).delay(retry, &mut rng.clone())
}

fn on_event(state: &watch::Sender<Link>, event: &async_nats::Event) {
    use async_nats::Event;
    match event {
        Event::Connected => {
            state.send_replace(Link::Up);
            tracing::info!(target: "tower_mq::nats", "connected");
        }
        Event::Disconnected => {
            state.send_replace(Link::Down);
            tracing::warn!(target: "tower_mq::nats", "disconnected; reconnecting");
        }
        Event::Closed => {
            state.send_replace(Link::Closed);
            tracing::warn!(target: "tower_mq::nats", "connection closed");
        }
        Event::LameDuckMode => {
            tracing::warn!(target: "tower_mq::nats", "server entered lame duck mode")
        }
        Event::Draining => tracing::info!(target: "tower_mq::nats", "draining"),
        Event::SlowConsumer(sid) => {
            tracing::warn!(target: "tower_mq::nats", sid, "slow consumer: server dropped messages")
        }
        Event::ServerError(err) => {
            tracing::warn!(target: "tower_mq::nats", error = %err, "server error")
        }
        Event::ClientError(err) => {
            tracing::warn!(target: "tower_mq::nats", error = %err, "client error")
        }
    }
}

// `Sync` so that the services holding it are (axum state, `BoxCloneSyncService`).
type WaitConnected = Pin<Box<dyn Future<Output = bool> + Send + Sync>>;

/// `poll_ready` for services on a [`Connection`]: pending while disconnected.
///
/// Holds only a wait in progress; the state it reads is the connection's, which the
/// service holds anyway: cloning a service (often once per message) then clones no
/// watch of its own.
#[derive(Default)]
pub(crate) struct Readiness {
    wait: Option<WaitConnected>,
}

impl Readiness {
    pub(crate) fn poll_ready(
        &mut self,
        connection: &Connection,
        cx: &mut Context<'_>,
        operation: Operation,
    ) -> Poll<Result<(), Error>> {
        loop {
            if let Some(wait) = self.wait.as_mut() {
                let alive = std::task::ready!(wait.as_mut().poll(cx));
                self.wait = None;
                if !alive {
                    return Poll::Ready(Err(Error::permanent(BROKER, operation)
                        .with_reason("the NATS connection is closed")));
                }
            }
            match *connection.inner.connected.borrow() {
                Link::Up => return Poll::Ready(Ok(())),
                Link::Closed => {
                    return Poll::Ready(Err(Error::permanent(BROKER, operation)
                        .with_reason("the NATS connection is closed")))
                }
                Link::Down => {}
            }
            let mut connected = connection.inner.connected.clone();
            self.wait = Some(Box::pin(async move {
                connected.wait_for(|c| *c != Link::Down).await.is_ok()
            }));
        }
    }
}

impl Clone for Readiness {
    fn clone(&self) -> Self {
        // A clone starts with no wait of its own.
        Readiness { wait: None }
    }
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readiness")
            .field("waiting", &self.wait.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_clients_reconnect_after_different_delays() {
        let (min, max) = (Duration::from_millis(20), Duration::from_secs(2));
        let (a, b) = (FastRng::new(), FastRng::new());
        assert_eq!(reconnect_delay(1, min, max, &a), Duration::ZERO);
        let a: Vec<_> = (2..10).map(|n| reconnect_delay(n, min, max, &a)).collect();
        let b: Vec<_> = (2..10).map(|n| reconnect_delay(n, min, max, &b)).collect();
        assert_ne!(a, b, "two clients reconnect in lockstep");
        assert!(a.iter().chain(&b).all(|d| *d <= max));
        assert!(a[0] <= min && b[0] <= min);
    }
}

//! `XADD` publishers: one message per call, or a pipelined batch.

use std::fmt;
use std::task::{Context, Poll};

use redis::aio::ConnectionManager;
use redis::{Cmd, RedisResult};
use tower::Service;

use crate::redis::config::Config;
use crate::redis::connection::{Connection, Readiness};
use crate::redis::future::ResponseFuture;
use std::sync::Arc;

use crate::redis::layout::{encode, Fields, StreamLayout};
use crate::redis::redis_error;
use crate::redis::BROKER;
use crate::{Error, Guarantee, Message, Operation, Position, Receipt};

/// How a stream is trimmed on every append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Trim {
    max_len: usize,
    approximate: bool,
}

/// Options shared by [`Publisher`] and [`BatchPublisher`].
#[derive(Debug, Clone, Default)]
struct Options {
    trim: Option<Trim>,
    ignore_unsupported: bool,
    layout: Arc<StreamLayout>,
}

/// Appends messages to Redis streams with `XADD`: a
/// `Service<Message, Response = Receipt, Error = Error>`.
///
/// The message's destination names the stream; the stream is created by the first
/// append. The receipt is stored, with the id Redis assigned as its
/// [`Position::Id`](crate::Position::Id). Clones
/// share one multiplexed connection; the publisher is `Send + Sync + Clone`: keep one
/// in axum state or a `BoxCloneSyncService`. See the [module docs](crate::redis) for
/// the field layout, what is refused, and an example.
// `Clone` is derived: a clone of `Readiness` starts with no wait of its own.
#[derive(Clone)]
pub struct Publisher {
    readiness: Readiness,
    options: Options,
}

impl Publisher {
    /// Connects to the server `config` names.
    pub async fn connect(config: &Config) -> Result<Self, Error> {
        Ok(
            Publisher::from_connection(Connection::connect(config).await?)
                .layout(config.stream_layout.clone()),
        )
    }

    /// A publisher on an existing connection manager (its own settings apply).
    pub fn from_connection_manager(manager: ConnectionManager) -> Self {
        Publisher::from_connection(Connection::from_manager(
            manager,
            std::time::Duration::from_secs(1),
        ))
    }

    fn from_connection(conn: Connection) -> Self {
        Publisher {
            readiness: Readiness::new(conn),
            options: Options::default(),
        }
    }

    /// Trims every stream appended to to about `max_len` entries (`MAXLEN ~`): Redis
    /// trims whole internal nodes, so a stream may hold somewhat more, cheaply.
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.options.trim = Some(Trim {
            max_len,
            approximate: true,
        });
        self
    }

    /// Trims every stream appended to to exactly `max_len` entries (`MAXLEN =`), which
    /// costs more per append than [`max_len`](Self::max_len).
    pub fn exact_max_len(mut self, max_len: usize) -> Self {
        self.options.trim = Some(Trim {
            max_len,
            approximate: false,
        });
        self
    }

    /// Lays entries out this way (default: the config's, [`StreamLayout::new`] for a
    /// publisher built from a connection manager).
    pub fn layout(mut self, layout: StreamLayout) -> Self {
        self.options.layout = Arc::new(layout);
        self
    }

    /// Whether what Redis cannot honour or the layout has no field for is carried or
    /// left out instead of failing the publish: a priority is carried in the
    /// `<prefix>priority` control field, unhonoured; a property without a field is
    /// left out. Off by default.
    pub fn ignore_unsupported(mut self, ignore: bool) -> Self {
        self.options.ignore_unsupported = ignore;
        self
    }

    /// A pipelining batch publisher on the same connection with the same options.
    pub fn batch(&self) -> BatchPublisher {
        BatchPublisher {
            readiness: self.readiness.clone(),
            options: self.options.clone(),
        }
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("connected", &self.readiness.connection().is_up())
            .field("options", &self.options)
            .finish()
    }
}

fn xadd(stream: &str, trim: Option<Trim>, fields: &Fields) -> Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream);
    if let Some(trim) = trim {
        cmd.arg("MAXLEN")
            .arg(if trim.approximate { "~" } else { "=" })
            .arg(trim.max_len);
    }
    cmd.arg("*");
    for (name, value) in fields {
        cmd.arg(name.as_ref()).arg(value.as_ref());
    }
    cmd
}

impl Service<Message> for Publisher {
    type Response = Receipt;
    type Error = Error;
    type Future = ResponseFuture<Receipt>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.readiness.poll_ready(cx)
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let mut conn = self.readiness.connection().clone();
        let options = self.options.clone();
        ResponseFuture::new(async move {
            let stream = message.shared_destination();
            let fields = encode(&options.layout, &message, options.ignore_unsupported)?;
            let result: RedisResult<String> = xadd(&stream, options.trim, &fields)
                .query_async(conn.manager_mut())
                .await;
            let id = conn.checked(result, Operation::Publish, &stream)?;
            Ok(Receipt::new(BROKER, stream, Guarantee::Stored).with_position(Position::Id(id)))
        })
    }
}

/// Appends a batch of messages in one pipelined round trip: a
/// `Service<Vec<Message>, Response = Vec<Result<Receipt, Error>>, Error = Error>`, the
/// shape the batch layer feeds.
///
/// Each message gets its own result, in order: a message that cannot be encoded (see
/// [`Publisher`]) or that the server refuses fails alone. The
/// pipeline is not a transaction; when the connection fails under it the whole call
/// fails with a transient error, and some of its messages may have been appended
/// (retrying can then duplicate them). Built with [`Publisher::batch`] or
/// [`BatchPublisher::connect`].
// `Clone` is derived: a clone of `Readiness` starts with no wait of its own.
#[derive(Clone)]
pub struct BatchPublisher {
    readiness: Readiness,
    options: Options,
}

impl BatchPublisher {
    /// Connects to the server `config` names, with default options (see [`Publisher`]
    /// and [`Publisher::batch`] for trimming and `ignore_unsupported`).
    pub async fn connect(config: &Config) -> Result<Self, Error> {
        Ok(Publisher::connect(config).await?.batch())
    }
}

impl fmt::Debug for BatchPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchPublisher")
            .field("connected", &self.readiness.connection().is_up())
            .field("options", &self.options)
            .finish()
    }
}

impl Service<Vec<Message>> for BatchPublisher {
    type Response = Vec<Result<Receipt, Error>>;
    type Error = Error;
    type Future = ResponseFuture<Vec<Result<Receipt, Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.readiness.poll_ready(cx)
    }

    fn call(&mut self, messages: Vec<Message>) -> Self::Future {
        let mut conn = self.readiness.connection().clone();
        let options = self.options.clone();
        ResponseFuture::new(async move {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            let mut sent = 0usize;
            let encoded: Vec<Result<std::sync::Arc<str>, Error>> = messages
                .iter()
                .map(|message| {
                    let stream = message.shared_destination();
                    let fields = encode(&options.layout, message, options.ignore_unsupported)?;
                    pipe.add_command(xadd(&stream, options.trim, &fields));
                    sent += 1;
                    Ok(stream)
                })
                .collect();
            let mut replies = if sent == 0 {
                Vec::new().into_iter()
            } else {
                let result: RedisResult<Vec<RedisResult<String>>> =
                    pipe.query_async(conn.manager_mut()).await;
                let destination = messages.first().map_or("", |m| m.destination());
                conn.checked(result, Operation::Publish, destination)?
                    .into_iter()
            };
            let results = encoded
                .into_iter()
                .map(|stream| {
                    let stream = stream?;
                    match replies.next() {
                        Some(Ok(id)) => Ok(Receipt::new(BROKER, stream, Guarantee::Stored)
                            .with_position(Position::Id(id))),
                        Some(Err(err)) => Err(redis_error(Operation::Publish, &stream, err)),
                        None => Err(Error::transient(BROKER, Operation::Publish)
                            .with_destination(&*stream)
                            .with_reason("the pipeline returned fewer replies than commands")),
                    }
                })
                .collect();
            Ok(results)
        })
    }
}

//! The Strongbox client: publish to and subscribe from a Strongbox broker
//! over QUIC with mutual TLS.
//!
//! # Model
//!
//! A [`Client`] is one QUIC connection to the broker, authenticated by this
//! application's certificate; the broker maps the certificate to a
//! *principal* ([`Client::principal`]) and checks every request against its
//! ACLs. On that connection:
//!
//! - a [`Producer`] keeps one long-lived stream on which it pipelines
//!   record batches (up to the broker's `max_in_flight`). Records are
//!   batched per partition adaptively: a record goes out at once when its
//!   partition's pipeline has room, and records collect into a growing
//!   batch while it has none (see [`ProducerConfig`]); each `send` returns
//!   a future that resolves to the record's offset, and waits while the
//!   producer's buffer is full ([`Producer::try_send`] returns
//!   [`TrySendError::WouldBlock`] instead). Producers are idempotent: the
//!   broker drops a batch it already stored, so retries after a dropped
//!   connection never write twice;
//! - a [`Consumer`] opens one stream per subscription (a partition, or a
//!   consumer group whose partitions the broker assigns) and is a
//!   [`futures::Stream`] of records. Credit-based flow control keeps its
//!   memory bounded however slow the application is;
//! - [`Admin`] sends one request per stream: topics, ACLs, producer ids,
//!   keys, audit, access requests, end-to-end recipients; [`audit`] reads
//!   and verifies the hash-chained audit trail, and [`checkpoint`] checks
//!   the broker's state against a checkpoint it signed.
//!
//! Producers and consumers reconnect with exponential backoff and jitter
//! when the connection drops ([`ReconnectPolicy`]). A layer that rewrites
//! values, such as end-to-end encryption ([`e2e`]), plugs into producers as
//! a [`ValueSealer`] and into consumers as a [`ValueOpener`].
//!
//! # Failures and time limits
//!
//! Nothing waits without bound:
//!
//! - every record is acknowledged or fails with [`ClientError::Timeout`]
//!   (code [`ErrorCode::Timeout`]) within
//!   [`ProducerConfig::delivery_timeout`] (default 30 s), counted from
//!   `send`. Until then the producer retries what can heal: a lost
//!   connection (it reconnects and sends every unacknowledged batch again
//!   with the same sequence numbers, so the broker stores each once),
//!   `shutting_down`, `partition_unavailable`, `timeout`. Anything else,
//!   such as `not_authorized`, `data_damaged` or `key_destroyed`, fails the
//!   record at once. [`ErrorCode::is_retriable`] is the one place that
//!   decides;
//! - a subscription is established, and re-established after a lost
//!   connection or a retriable refusal, within
//!   [`ConsumerConfig::subscribe_timeout`] (default 30 s), or its stream
//!   yields [`ClientError::Timeout`]. Waiting for new records on an
//!   established subscription is not limited;
//! - a partition the broker cannot read (damaged data, or a log whose
//!   damaged files kept it from opening) is reported, after every readable
//!   record before the damage, as one [`ClientError::PartitionDamaged`]
//!   item naming the topic, partition and offset range. The consumer goes
//!   on with its other partitions; the damaged one stops, or goes on after
//!   the range with [`ConsumerConfig::skip_damaged`].
//!
//! ```no_run
//! use futures::StreamExt;
//! use strongbox_client::{Client, ClientConfig, ClientError, ConsumerConfig, Subscription};
//!
//! # async fn run() -> Result<(), ClientError> {
//! let client = Client::connect(ClientConfig::from_profile("strongbox-dev/profiles/bob.toml")?).await?;
//! let mut consumer = client
//!     .subscribe(Subscription::all_partitions("demo.orders"), ConsumerConfig::default())
//!     .await?;
//! while let Some(item) = consumer.next().await {
//!     match item {
//!         Ok(record) => println!("{}@{}", record.partition, record.offset),
//!         Err(e @ ClientError::PartitionDamaged { .. }) => eprintln!("warning: {e}"),
//!         Err(e) => return Err(e),
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Profiles
//!
//! A profile is a small TOML file that says where the broker is and which
//! credentials to use. `strongbox-broker dev` writes one per development
//! identity, and the `strongbox` CLI reads one from `--profile` or the
//! `STRONGBOX_PROFILE` environment variable.
//!
//! ```toml
//! broker = "127.0.0.1:7443"      # host:port of the broker (UDP, QUIC)
//! server_name = "localhost"      # optional: name in the broker's certificate;
//!                                # defaults to the host part of `broker`
//! ca = "ca.pem"                  # CA certificate(s) that sign the broker's certificate
//! cert = "alice.pem"             # this client's certificate chain, leaf first
//! key = "alice.key"              # this client's private key (PKCS#8, PKCS#1 or SEC1 PEM)
//! client_name = "billing/1.4"    # optional: shown in the broker's logs
//! key_exchange = "prefer-hybrid" # optional: "prefer-hybrid" (default), "require-hybrid"
//!                                # or "classical" (see KeyExchange)
//! ```
//!
//! The nodes of a cluster are listed instead with `brokers = ["h1:7443",
//! "h2:7443", "h3:7443"]` (`broker` or `brokers`, not both): the client
//! connects to the first that answers and, when its connection is lost,
//! goes on with the next one ([`ClientConfig::brokers`]).
//!
//! Relative paths are relative to the folder holding the profile. Unknown
//! keys are refused, so a typo does not go unnoticed. The key file is read
//! at every connection attempt and never logged.
//!
//! # Example
//!
//! ```no_run
//! use futures::StreamExt;
//! use strongbox_client::{Client, ClientConfig, ConsumerConfig, ProducerConfig, ProducerRecord, Subscription};
//!
//! # async fn run() -> Result<(), strongbox_client::ClientError> {
//! let client = Client::connect(ClientConfig::from_profile("strongbox-dev/profiles/alice.toml")?).await?;
//! println!("connected as {}", client.principal());
//!
//! let producer = client.producer(ProducerConfig::default()).await?;
//! let meta = producer
//!     .send_and_wait(ProducerRecord::new("demo.greetings", "hello").key("user-7"))
//!     .await?;
//! println!("stored at offset {}", meta.offset);
//! producer.close().await?;
//!
//! let mut consumer = client
//!     .subscribe(Subscription::partition("demo.greetings", meta.partition), ConsumerConfig::default())
//!     .await?;
//! if let Some(record) = consumer.next().await {
//!     let record = record?;
//!     println!("{} -> {}", record.offset, String::from_utf8_lossy(&record.value));
//! }
//! consumer.close().await;
//! client.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Errors
//!
//! Every fallible call returns [`ClientError`]. A refusal by the broker is
//! [`ClientError::Broker`] with the wire [`ErrorCode`] and the broker's
//! message, shown as is: `not authorized: spiffe://strongbox.dev/bob may
//! not publish demo.greetings`. A certificate the broker does not accept is
//! [`ClientError::Authentication`]. [`ClientError::code`] gives the wire
//! code where there is one (also `timeout` for [`ClientError::Timeout`]),
//! and [`ClientError::is_retriable`] whether trying again can help.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::unwrap_used, clippy::panic)]

mod admin;
pub mod audit;
mod backoff;
pub mod checkpoint;
mod config;
mod connection;
mod consumer;
pub mod e2e;
mod error;
pub mod partitioner;
mod producer;
mod tls;
mod transform;
mod wire;

pub use admin::{Admin, AuditHead, KeyChange, KeyStatus, LEADER_HOPS, ProducerIdentity, WhoAmI};
pub use config::{ClientConfig, PemSource, ReconnectPolicy};
pub use connection::{BrokerLimits, Client};
pub use consumer::{ConsumedRecord, Consumer, ConsumerConfig, Subscription, Target};
pub use error::ClientError;
pub use producer::{
    DEFAULT_BUFFER_BYTES, DeliveryFuture, Producer, ProducerConfig, ProducerRecord, RecordMetadata,
    TrySendError,
};
pub use tls::KeyExchange;
pub use transform::{Opened, ValueOpener, ValueSealer};

/// The wire protocol crate, for the types requests and responses use
/// ([`TopicConfig`](protocol::model::TopicConfig),
/// [`AclRule`](protocol::model::AclRule), ...).
pub use strongbox_protocol as protocol;
pub use strongbox_protocol::ErrorCode;
pub use strongbox_protocol::frames::subscribe::StartPosition;

//! The services: what the broker serves, each part owning its state.
//!
//! - [`partitions`]: the topics served, their partitions and the gateway to
//!   storage, idempotent producers, consumer groups, partition integrity;
//! - [`keys`]: key rotation, rewrap, retirement and destruction;
//! - [`access`]: access requests and end-to-end recipients;
//! - [`authz`]: authorization of a caller's operation, audited.
//!
//! The partition and key services own their state ([`partitions::Partitions`],
//! [`keys::Keys`]); the access service keeps its state in the metadata
//! store. [`BrokerState`] holds the two service handles and only what the
//! transport (`crate::transport`) and several services share: the
//! configuration, the metadata store, the live ACL, the metrics, the audit
//! trail, the admin lock, the client-certificate verifier and the shutdown
//! signal.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use strongbox_protocol::model::AclRule;
use strongbox_storage::data_dir::{self, DataDirError};
use strongbox_storage::io::{FileIo, StorageIo, default_io, durable};
use strongbox_storage::keys::{
    FileKeyProvider, KeyManager, KeyProvider, PinSource, Pkcs11KeyProvider,
};
use strongbox_storage::meta::MetaStore;
use tokio::sync::watch;

use crate::acl::Acl;
use crate::audit::AuditLog;
use crate::config::{BrokerConfig, KeyProviderKind};
use crate::metrics::BrokerMetrics;

pub mod access;
pub mod authz;
pub mod caller;
pub mod keys;
pub mod metadata;
pub mod partitions;
pub mod reload;

use crate::error::BrokerError;
use keys::key_lifecycle;
use partitions::partition_watch;
use partitions::topics::{self, TopicTable};

/// Unwrapped data keys kept in memory.
const DEK_CACHE_CAPACITY: usize = 4096;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The metadata store could not be opened.
    #[error("cannot open the metadata store: {0}")]
    Meta(#[from] strongbox_storage::meta::MetaError),
    /// The data directory is not in a state the broker may start from
    /// (partition logs without a metadata store), or a topic deletion a
    /// crash interrupted cannot be finished.
    #[error("{0}")]
    DataDirState(#[from] DataDirError),
    /// The key provider could not be opened.
    #[error("cannot open the key provider: {0}")]
    Keys(#[from] strongbox_storage::keys::KeyError),
    /// The ACL from the config or the store is invalid.
    #[error("ACL: {0}")]
    Acl(String),
    /// Another start-up step failed.
    #[error("{0}")]
    Other(String),
}

/// What the transport and several services share, and the handles of the
/// services that own the rest.
#[derive(Debug)]
pub struct BrokerState {
    /// The validated configuration.
    pub config: BrokerConfig,
    /// Topics, groups offsets, producers, ACLs, keys registry: read here;
    /// the replicated parts are written only through [`Self::metadata`].
    pub meta: MetaStore,
    /// Metadata writes (topics, ACL rules, offsets, access requests,
    /// recipients, producer ids).
    pub metadata: metadata::Metadata,
    /// The partition service: topics, consumer groups, idempotent
    /// producers, partition states.
    pub partitions: partitions::Partitions,
    /// The key service: key manager, key metrics, rewrap.
    pub keys: keys::Keys,
    /// The live ACL.
    pub acl: Arc<Acl>,
    /// The `[acl]` section in force (superusers and config rules): the
    /// start's, then each successful reload's (SIGHUP).
    acl_seed: std::sync::RwLock<reload::AclSeed>,
    /// Metrics.
    pub metrics: Arc<BrokerMetrics>,
    /// The audit trail.
    pub audit: AuditLog,
    /// Serializes admin changes to topics and ACLs.
    pub admin_lock: tokio::sync::Mutex<()>,
    /// The client-certificate verifier, set once the listener is built:
    /// connections re-check their certificate against it after a CRL
    /// reload.
    pub client_verifier: std::sync::OnceLock<Arc<crate::tls::ReloadingClientVerifier>>,
    /// The client listener's bound address, set once it is bound (what
    /// `Metadata` reports without `cluster.client_advertise`).
    pub client_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// Turns true when the broker shuts down.
    pub shutdown: watch::Receiver<bool>,
}

impl BrokerState {
    /// Opens the data directory: metadata store, key provider, topics, ACL.
    ///
    /// # Errors
    ///
    /// [`StartError`] naming what could not be opened. A partition that
    /// cannot be opened is not an error: it is served as unavailable.
    pub fn open(
        config: BrokerConfig,
        metrics: Arc<BrokerMetrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<Self>, StartError> {
        Self::open_with_io(config, metrics, shutdown, default_io())
    }

    /// [`BrokerState::open`] with the partition logs on `io` (tests inject
    /// storage faults this way).
    ///
    /// # Errors
    ///
    /// As [`BrokerState::open`].
    pub fn open_with_io(
        config: BrokerConfig,
        metrics: Arc<BrokerMetrics>,
        shutdown: watch::Receiver<bool>,
        io: Arc<dyn StorageIo>,
    ) -> Result<Arc<Self>, StartError> {
        let data_dir = config.broker.data_dir.clone();
        create_private_dir(&data_dir)?;
        // A data directory that holds partition logs never gets a new,
        // empty metadata store: that would hide the loss of the old one.
        let meta_path = data_dir::meta_path(&data_dir);
        let meta = if data_dir::may_create_meta(&FileIo, &data_dir)? {
            MetaStore::open(meta_path)?
        } else {
            MetaStore::open_existing(meta_path)?
        };
        let provider = open_provider(&config)?;
        let key_metrics = Arc::new(key_lifecycle::KeyMetrics::new(
            &metrics,
            provider.info().kind,
        ));
        // Before any log opens, so recovery's fsyncs and unwraps count.
        key_lifecycle::observe_storage(&key_metrics);
        let keys = Arc::new(KeyManager::new(provider, meta.clone(), DEK_CACHE_CAPACITY));
        let audit = AuditLog::new(metrics.registry())
            .map_err(|e| StartError::Other(format!("audit metrics: {e}")))?;
        // Before any log opens, so unwraps at start-up are counted too.
        keys.set_unwrap_observer(audit.unwrap_observer());
        // Topic deletions a stop or a power cut interrupted: their key
        // envelopes go before anything else opens.
        for done in data_dir::finish_topic_deletions(io.as_ref(), &data_dir, &keys)? {
            tracing::warn!(topic = %done.name, "finished deleting a topic whose deletion was interrupted");
        }
        let partition_watch = Arc::new(
            partition_watch::PartitionWatch::new(metrics.registry())
                .map_err(|e| StartError::Other(format!("partition metrics: {e}")))?,
        );
        let topics = TopicTable::load(topics::OpenEnv {
            data_dir: data_dir.clone(),
            meta: meta.clone(),
            keys: keys.clone(),
            io,
            on_roll: Some(partition_watch.roll_hook()),
        })
        .map_err(|e| StartError::Other(e.message))?;
        for topic in topics.all() {
            metrics.touch_topic(topic.name());
            for p in topic.ready_partitions() {
                if let Some(reason) = p.read_only_reason() {
                    audit.record(
                        crate::audit::AuditEvent::alert(
                            crate::audit::AuditAction::PartitionReadOnly,
                            crate::audit::topic_resource(&p.topic),
                        )
                        .principal(crate::audit::BROKER_PRINCIPAL)
                        .detail("partition", p.index)
                        .detail("reason", crate::error::redact_paths(&reason)),
                    );
                }
            }
        }
        if let Some(created) = partitions::audit_topic::ensure_audit_topic(
            &config.topics,
            &meta,
            &topics,
            keys.clone(),
        )
        .map_err(|e| StartError::Other(format!("audit topic: {}", e.message)))?
        {
            audit.record(created);
        }
        let acl =
            Arc::new(Acl::from_config(&config.acl).map_err(|e| StartError::Acl(e.to_string()))?);
        let acl_seed = reload::AclSeed::from_config(&config.acl)
            .map_err(|e| StartError::Acl(e.to_string()))?;
        let rewrap_rate = config.keys.rewrap_rate;
        let node_id = config.node_id();
        let state = Arc::new(Self {
            config,
            metadata: metadata::Metadata::new(meta.clone(), node_id),
            meta,
            partitions: partitions::Partitions::new(topics, partition_watch),
            keys: keys::Keys::new(keys, key_metrics, rewrap_rate),
            acl,
            acl_seed: std::sync::RwLock::new(acl_seed),
            metrics,
            audit,
            admin_lock: tokio::sync::Mutex::new(()),
            client_verifier: std::sync::OnceLock::new(),
            client_addr: std::sync::OnceLock::new(),
            shutdown,
        });
        state.reload_acl().map_err(|e| StartError::Acl(e.message))?;
        key_lifecycle::refresh_compromised(&state);
        Ok(state)
    }

    /// Rules from the config file (as last loaded) followed by the rules
    /// granted at runtime (stored in the metadata store), published as a
    /// new ACL generation. Callers hold `admin_lock`, except at start.
    ///
    /// # Errors
    ///
    /// The store cannot be read or a rule does not compile.
    pub fn reload_acl(&self) -> Result<u64, BrokerError> {
        let seed = self
            .acl_seed
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        self.publish_acl(&seed)
    }

    /// Publishes `seed` with the stored rules as the live ACL.
    fn publish_acl(&self, seed: &reload::AclSeed) -> Result<u64, BrokerError> {
        let mut rules: Vec<AclRule> = seed.rules.clone();
        let stored = self.meta.read(|view| view.acls()).map_err(
            |e: strongbox_storage::meta::MetaError| BrokerError::internal("reading ACL rules", e),
        )?;
        rules.extend(stored.into_iter().map(|e| e.rule));
        self.acl
            .replace(seed.superusers.iter().cloned(), rules)
            .map_err(|e| BrokerError::internal("compiling ACL rules", e))
    }

    /// The rules of the config file's `[[acl.rules]]` now in force.
    pub fn config_acl_rules(&self) -> Vec<AclRule> {
        self.acl_seed
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .rules
            .clone()
    }

    /// True when the broker is shutting down.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// Creates the data directory (`0700`, and every missing parent) with each
/// new name made durable, and makes the data directory's own name durable
/// even when something else created it (a package, `strongbox-broker
/// dev`): everything the broker acknowledges lives under it.
fn create_private_dir(dir: &Path) -> Result<(), StartError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| StartError::DataDir {
        path: dir.display().to_string(),
        source,
    };
    durable::create_private_dir_all(&FileIo, dir).map_err(|e| err(e.into()))?;
    durable::sync_parent(&FileIo, dir).map_err(|e| err(e.into()))?;
    let mode = std::fs::metadata(dir).map_err(err)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            dir = %dir.display(),
            mode = format!("{:o}", mode & 0o777),
            "the data directory is accessible to other users; chmod 700 it"
        );
    }
    Ok(())
}

pub(crate) fn open_provider(config: &BrokerConfig) -> Result<Arc<dyn KeyProvider>, StartError> {
    match config.keys.provider {
        KeyProviderKind::File => Ok(Arc::new(FileKeyProvider::open(&config.keys.file.dir)?)),
        KeyProviderKind::Pkcs11 => {
            let p = config.keys.pkcs11.as_ref().ok_or_else(|| {
                StartError::Other("keys.pkcs11: missing section for provider = \"pkcs11\"".into())
            })?;
            let pin = match (&p.pin_file, &p.pin_env) {
                (Some(file), None) => PinSource::File(file.clone()),
                (None, Some(var)) => PinSource::Env(var.clone()),
                _ => {
                    return Err(StartError::Other(
                        "keys.pkcs11: set exactly one of pin_file and pin_env".into(),
                    ));
                }
            };
            let provider = Pkcs11KeyProvider::open(&strongbox_storage::keys::Pkcs11Config {
                module: p.module.clone(),
                token_label: p.token_label.clone(),
                pin,
            })?;
            Ok(Arc::new(provider))
        }
    }
}

/// How often background maintenance (segment age rolls, retention, expired
/// grants) runs.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(30);

//! A key provider backed by a PKCS#11 token (an HSM; SoftHSM2 in tests).
//!
//! KEKs are generated inside the token and never leave it:
//!
//! | attribute | value |
//! | --- | --- |
//! | `CKA_CLASS` / `CKA_KEY_TYPE` | `CKO_SECRET_KEY` / `CKK_AES`, `CKA_VALUE_LEN` 32 |
//! | `CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE` | true |
//! | `CKA_EXTRACTABLE`, `CKA_MODIFIABLE` | false |
//! | `CKA_WRAP`, `CKA_UNWRAP` | true |
//! | `CKA_ENCRYPT`, `CKA_DECRYPT`, `CKA_SIGN`, `CKA_VERIFY`, `CKA_DERIVE` | false |
//! | `CKA_LABEL` | [`KekId::label`], e.g. `strongbox/kek/broker/v1` |
//!
//! A data key is wrapped with `CKM_AES_KEY_WRAP_PAD` (RFC 5649): it is
//! imported as a session object, wrapped, and the object destroyed. It is
//! unwrapped with `C_UnwrapKey` into a session object that is not sensitive
//! and is extractable, its `CKA_VALUE` read into a zeroizing buffer, and the
//! object destroyed.
//!
//! The checkpoint signing key ([`super::signing`]) is an EC key pair on
//! P-256 generated in the token with `CKM_EC_KEY_PAIR_GEN`, both halves
//! labelled [`CHECKPOINT_KEY_LABEL`]:
//!
//! | attribute | private key | public key |
//! | --- | --- | --- |
//! | `CKA_TOKEN` | true | true |
//! | `CKA_PRIVATE` | true | false |
//! | `CKA_SENSITIVE`, `CKA_EXTRACTABLE` | true, false | – |
//! | `CKA_SIGN` / `CKA_VERIFY` | true | true |
//! | `CKA_DECRYPT`, `CKA_DERIVE`, `CKA_UNWRAP` | false | – |
//! | `CKA_EC_PARAMS` | – | prime256v1 |
//!
//! It signs with `CKM_ECDSA` over a SHA-256 digest computed outside the
//! token (every token has `CKM_ECDSA`; fewer have `CKM_ECDSA_SHA256`).
//!
//! Tokens are found by label, never by slot id (slot ids change when tokens
//! are added). The PIN comes from a file or an environment variable, never
//! from the configuration itself, and appears in no message.
//!
//! A `Session` may be used by one thread at a time, so sessions sit in a
//! small pool behind a mutex. A device or session failure drops every pooled
//! session; the next call finds the token again, opens a new session and
//! logs in, so the provider recovers by itself when the HSM comes back.
//!
//! Creating or destroying a token object (a KEK) runs alone: no other call
//! of this provider uses the token meanwhile. SoftHSM2 does not isolate a
//! `C_GenerateKey` from searches, wraps and unwraps in other sessions of
//! the same process: about one generation in twenty failed with
//! `CKR_GENERAL_ERROR` (or `CKR_TEMPLATE_INCONSISTENT`) while other threads
//! looked keys up. Rotations are rare, so the short pause costs nothing.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

use super::signing::{
    CHECKPOINT_KEY_LABEL, CheckpointPublicKey, P256_EC_PARAMS, SIGNATURE_LEN, digest,
};
use super::{DEK_LEN, Dek, KekId, KeyError, KeyProvider, ProviderInfo};

/// Bytes in a wrapped DEK (RFC 5649 adds one 64-bit block).
const WRAPPED_DEK_LEN: usize = DEK_LEN + 8;

/// Idle sessions kept open at most.
const POOL_SIZE: usize = 4;

/// Where the token PIN comes from. Never the PIN itself.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PinSource {
    /// A file holding the PIN (one trailing newline is ignored). It must not
    /// be readable by others.
    File(PathBuf),
    /// The name of an environment variable holding the PIN.
    Env(String),
}

impl std::fmt::Debug for PinSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "PinSource::File({})", p.display()),
            Self::Env(v) => write!(f, "PinSource::Env({v})"),
        }
    }
}

impl PinSource {
    /// Reads the PIN.
    ///
    /// # Errors
    ///
    /// [`KeyError::Config`] when the file or variable is missing, empty,
    /// or the file is readable by others.
    fn read(&self) -> Result<AuthPin, KeyError> {
        let mut raw = match self {
            Self::File(path) => {
                let meta = std::fs::metadata(path).map_err(|e| {
                    KeyError::Config(format!("cannot read PIN file {}: {e}", path.display()))
                })?;
                let mode = meta.permissions().mode();
                if mode & 0o007 != 0 {
                    return Err(KeyError::Config(format!(
                        "PIN file {} is accessible by others (mode {:o}): run chmod 600 \
                         (or 640 for a service group) on it",
                        path.display(),
                        mode & 0o777
                    )));
                }
                if mode & 0o070 != 0 {
                    tracing::warn!(file = %path.display(), "PIN file is readable by its group");
                }
                let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
                    KeyError::Config(format!("cannot read PIN file {}: {e}", path.display()))
                })?);
                String::from_utf8(bytes.to_vec()).map_err(|e| {
                    let mut b = e.into_bytes();
                    b.zeroize();
                    KeyError::Config(format!("PIN file {} is not UTF-8", path.display()))
                })?
            }
            Self::Env(var) => std::env::var(var).map_err(|_| {
                KeyError::Config(format!(
                    "environment variable {var}, which should hold the token PIN, is not set"
                ))
            })?,
        };
        let trimmed = raw.trim_end_matches(['\n', '\r']).to_owned();
        raw.zeroize();
        if trimmed.is_empty() {
            return Err(KeyError::Config(format!(
                "the token PIN from {self:?} is empty"
            )));
        }
        Ok(AuthPin::from(trimmed))
    }
}

/// How to reach the token that holds the KEKs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (shared library), e.g.
    /// `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The label of the token (found by label, never by slot id).
    pub token_label: String,
    /// Where the user PIN comes from.
    pub pin: PinSource,
}

/// One initialized context per module per process: `C_Initialize` is
/// process-wide, and finalizing one provider's context would pull the module
/// from under every other.
fn context(module: &Path) -> Result<Pkcs11, KeyError> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let key = module
        .canonicalize()
        .unwrap_or_else(|_| module.to_path_buf());
    let mut map = CONTEXTS
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(ctx) = map.get(&key) {
        return Ok(ctx.clone());
    }
    if !module.exists() {
        return Err(KeyError::Config(format!(
            "PKCS#11 module {} does not exist (install the HSM's PKCS#11 library, e.g. the \
             softhsm2 package, or fix the module path)",
            module.display()
        )));
    }
    let ctx = Pkcs11::new(module).map_err(|e| {
        KeyError::Config(format!(
            "cannot load PKCS#11 module {}: {e}",
            module.display()
        ))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(KeyError::Unavailable(format!(
                "cannot initialize PKCS#11 module {}: {e}; {}",
                module.display(),
                setup_hint(module)
            )));
        }
    }
    map.insert(key, ctx.clone());
    Ok(ctx)
}

/// What to check when a module does not start or does not show the token.
/// SoftHSM2 reads the file named by `SOFTHSM2_CONF` (its token directory
/// among others) when it is initialized: a broker started without the
/// variable the token was created with sees other tokens, or none.
fn setup_hint(module: &Path) -> String {
    let softhsm = module
        .file_name()
        .is_some_and(|n| n.to_string_lossy().to_lowercase().contains("softhsm"));
    if !softhsm {
        return "check the HSM vendor's configuration for this module (its configuration \
                file or environment variables) and that the HSM is reachable"
            .to_owned();
    }
    let conf = match std::env::var_os("SOFTHSM2_CONF") {
        None => "SOFTHSM2_CONF is not set, so SoftHSM2 reads its built-in default \
                 configuration (/etc/softhsm/softhsm2.conf)"
            .to_owned(),
        Some(v) if v.is_empty() => "SOFTHSM2_CONF is set but empty".to_owned(),
        Some(v) => {
            let path = PathBuf::from(v);
            if path.is_file() {
                format!("SOFTHSM2_CONF is {}", path.display())
            } else {
                format!(
                    "SOFTHSM2_CONF names {}, which is not a file",
                    path.display()
                )
            }
        }
    };
    format!(
        "{conf}: SoftHSM2 finds its tokens through the file named by SOFTHSM2_CONF \
         (directories.tokendir); set it in the broker's environment (the service unit, the \
         container) to the file the token was created with"
    )
}

/// True for errors that mean the device or the session is gone (rather than
/// a refusal of this request).
fn is_device_error(e: &CkError) -> bool {
    match e {
        CkError::Pkcs11(rv, _) => matches!(
            rv,
            RvError::DeviceError
                | RvError::DeviceMemory
                | RvError::DeviceRemoved
                | RvError::SessionClosed
                | RvError::SessionHandleInvalid
                | RvError::SessionCount
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::UserNotLoggedIn
                | RvError::CryptokiNotInitialized
                | RvError::SlotIdInvalid
        ),
        CkError::LibraryLoading(_) | CkError::NullFunctionPointer | CkError::MissingSymbol(_) => {
            true
        }
        _ => false,
    }
}

/// KEKs inside a PKCS#11 token.
pub struct Pkcs11KeyProvider {
    ctx: Pkcs11,
    module: PathBuf,
    token_label: String,
    pin: AuthPin,
    /// Idle, logged-in sessions.
    pool: Mutex<Vec<Session>>,
    /// Held exclusively while a token object is created or destroyed,
    /// shared by every other call (see the module docs).
    token_objects: RwLock<()>,
}

impl std::fmt::Debug for Pkcs11KeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11KeyProvider")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .finish_non_exhaustive()
    }
}

/// A checked-out session; back to the pool on success.
struct Lease<'a> {
    provider: &'a Pkcs11KeyProvider,
    session: Option<Session>,
}

impl Lease<'_> {
    fn session(&self) -> &Session {
        // Present from creation until `finish` consumes the lease.
        self.session
            .as_ref()
            .expect("a lease holds its session until it is finished")
    }

    /// Returns the session to the pool unless `failed_device` says it is
    /// dead, in which case every pooled session is dropped too.
    fn finish(mut self, failed_device: bool) {
        let Some(session) = self.session.take() else {
            return;
        };
        let mut pool = self.provider.pool();
        if failed_device {
            pool.clear();
            drop(session);
        } else if pool.len() < POOL_SIZE {
            pool.push(session);
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        // Dropped without `finish` (an early return): the session state is
        // unknown, so close it rather than pool it.
        self.session.take();
    }
}

impl Pkcs11KeyProvider {
    /// Loads the module, finds the token by label, reads the PIN and logs
    /// in once to check it.
    ///
    /// # Errors
    ///
    /// [`KeyError::Config`] for a missing module, an unknown token label
    /// (the message lists the labels present), a token without AES key wrap
    /// with padding, or a PIN source that cannot be read;
    /// [`KeyError::Login`] for a wrong or locked PIN;
    /// [`KeyError::Unavailable`] when the device fails.
    pub fn open(config: &Pkcs11Config) -> Result<Self, KeyError> {
        if config.token_label.is_empty() {
            return Err(KeyError::Config("pkcs11 token_label is empty".to_owned()));
        }
        let ctx = context(&config.module)?;
        let pin = config.pin.read()?;
        let provider = Self {
            ctx,
            module: config.module.clone(),
            token_label: config.token_label.clone(),
            pin,
            pool: Mutex::new(Vec::new()),
            token_objects: RwLock::new(()),
        };
        let found = match provider.find_slot() {
            Err(KeyError::Unavailable(_)) => {
                provider.reinitialize();
                provider.find_slot()?
            }
            other => other?,
        };
        let slot = match found {
            Ok(slot) => slot,
            Err(labels) => {
                return Err(KeyError::Config(format!(
                    "no token labelled \"{}\" in PKCS#11 module {}; tokens present: {}; {}",
                    provider.token_label,
                    provider.module.display(),
                    if labels.is_empty() {
                        "none".to_owned()
                    } else {
                        labels.join(", ")
                    },
                    setup_hint(&provider.module)
                )));
            }
        };
        provider.check_key_wrap(slot)?;
        provider.lease()?.finish(false);
        Ok(provider)
    }

    /// Checks that the token wraps and unwraps with
    /// `CKM_AES_KEY_WRAP_PAD`. Asks about that one mechanism: listing them
    /// all would make cryptoki log an error for each mechanism type it does
    /// not know (about thirty with SoftHSM2), at every start.
    fn check_key_wrap(&self, slot: Slot) -> Result<(), KeyError> {
        let unsupported = || {
            KeyError::Config(format!(
                "{} does not support CKM_AES_KEY_WRAP_PAD (RFC 5649) for wrapping and \
                 unwrapping, which Strongbox needs",
                self.where_()
            ))
        };
        match self
            .ctx
            .get_mechanism_info(slot, MechanismType::AES_KEY_WRAP_PAD)
        {
            Ok(info) if info.wrap() && info.unwrap() => Ok(()),
            Ok(_) | Err(CkError::Pkcs11(RvError::MechanismInvalid, _)) => Err(unsupported()),
            Err(e) => Err(self.unavailable("ask about CKM_AES_KEY_WRAP_PAD", &e)),
        }
    }

    fn where_(&self) -> String {
        format!(
            "token \"{}\" of PKCS#11 module {}",
            self.token_label,
            self.module.display()
        )
    }

    /// For a call that only uses the token's objects.
    fn sharing_objects(&self) -> RwLockReadGuard<'_, ()> {
        self.token_objects
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// For a call that creates or destroys a token object.
    fn changing_objects(&self) -> RwLockWriteGuard<'_, ()> {
        self.token_objects
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn pool(&self) -> MutexGuard<'_, Vec<Session>> {
        self.pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The slot holding the token labelled `token_label`, or the labels of
    /// the tokens present when none is.
    fn find_slot(&self) -> Result<Result<Slot, Vec<String>>, KeyError> {
        let slots = self
            .ctx
            .get_slots_with_token()
            .map_err(|e| self.unavailable("list slots", &e))?;
        let mut labels = Vec::new();
        let mut found = Vec::new();
        for slot in slots {
            let info = self
                .ctx
                .get_token_info(slot)
                .map_err(|e| self.unavailable("read token info", &e))?;
            if info.label() == self.token_label {
                found.push(slot);
            } else if !info.label().is_empty() {
                // (An empty label is a slot with no token initialized in
                // it, such as SoftHSM2's free slot.)
                labels.push(format!("\"{}\"", info.label()));
            }
        }
        match found.as_slice() {
            [slot] => Ok(Ok(*slot)),
            [] => Ok(Err(labels)),
            _ => Err(KeyError::Config(format!(
                "{} tokens are labelled \"{}\" in PKCS#11 module {}; labels must be unique",
                found.len(),
                self.token_label,
                self.module.display()
            ))),
        }
    }

    fn unavailable(&self, what: &str, e: &CkError) -> KeyError {
        KeyError::Unavailable(format!("{what} on {}: {e}", self.where_()))
    }

    /// A logged-in session: a pooled one, or a new one. When no new session
    /// can be had, the module is re-initialized once and tried again: some
    /// modules (SoftHSM2 among them) only see a token that came back after
    /// `C_Initialize`.
    fn lease(&self) -> Result<Lease<'_>, KeyError> {
        let pooled = self.pool().pop();
        if let Some(session) = pooled {
            match self.logged_in(session) {
                Ok(lease) => return Ok(lease),
                // A dead pooled session: the pool was emptied; start afresh.
                Err(KeyError::Unavailable(_)) => {}
                Err(e) => return Err(e),
            }
        }
        match self.fresh_lease() {
            Err(KeyError::Unavailable(first)) => {
                tracing::warn!(token = %self.token_label, error = %first, "PKCS#11 token unreachable; re-initializing the module");
                self.reinitialize();
                self.fresh_lease()
            }
            other => other,
        }
    }

    fn fresh_lease(&self) -> Result<Lease<'_>, KeyError> {
        let slot = self
            .find_slot()?
            .map_err(|_| KeyError::Unavailable(format!("{} is not present", self.where_())))?;
        let session = self
            .ctx
            .open_rw_session(slot)
            .map_err(|e| self.unavailable("open a session", &e))?;
        self.logged_in(session)
    }

    /// `C_Finalize` then `C_Initialize`: every session of the module in this
    /// process is closed (other users of it reconnect on their next call).
    fn reinitialize(&self) {
        static REINIT: Mutex<()> = Mutex::new(());
        let _guard = REINIT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.pool().clear();
        let _ = self.ctx.clone().finalize();
        if let Err(e) = self
            .ctx
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            && !matches!(e, CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _))
        {
            tracing::warn!(module = %self.module.display(), error = %e, "PKCS#11 module re-initialization failed");
        }
    }

    /// Makes sure `session` is logged in as the user (a session loses its
    /// login when any session of the application logs out or the token is
    /// reset).
    fn logged_in(&self, session: Session) -> Result<Lease<'_>, KeyError> {
        let lease = Lease {
            provider: self,
            session: Some(session),
        };
        match lease
            .session()
            .get_session_info()
            .map(|i| i.session_state())
        {
            Ok(SessionState::RwUser) => return Ok(lease),
            Ok(_) => {}
            Err(e) => {
                lease.finish(true);
                return Err(self.unavailable("query a session", &e));
            }
        }
        match lease.session().login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(lease),
            Err(CkError::Pkcs11(
                rv @ (RvError::PinIncorrect
                | RvError::PinInvalid
                | RvError::PinLenRange
                | RvError::PinLocked
                | RvError::PinExpired
                | RvError::UserPinNotInitialized),
                _,
            )) => {
                lease.finish(false);
                Err(KeyError::Login(format!(
                    "{} refused the PIN ({rv}); check the PIN file or variable",
                    self.where_()
                )))
            }
            Err(e) => {
                lease.finish(true);
                Err(self.unavailable("log in", &e))
            }
        }
    }

    /// Runs `op` on a session. Device and session failures drop the pooled
    /// sessions and become [`KeyError::Unavailable`]; other failures go
    /// through `refused`.
    fn with_session<T>(
        &self,
        what: &str,
        op: impl FnOnce(&Session) -> Result<T, CkError>,
        refused: impl FnOnce(CkError) -> KeyError,
    ) -> Result<T, KeyError> {
        let lease = self.lease()?;
        match op(lease.session()) {
            Ok(v) => {
                lease.finish(false);
                Ok(v)
            }
            Err(e) if is_device_error(&e) => {
                lease.finish(true);
                tracing::warn!(token = %self.token_label, error = %e, "PKCS#11 device or session failed; will reconnect");
                Err(self.unavailable(what, &e))
            }
            Err(e) => {
                lease.finish(false);
                Err(refused(e))
            }
        }
    }

    /// Every KEK object labelled `label`. An empty answer is confirmed with
    /// [`Pkcs11KeyProvider::confirm_absent`].
    fn find_kek(&self, session: &Session, label: &str) -> Result<Vec<ObjectHandle>, CkError> {
        let found = session.find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Token(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ])?;
        if found.is_empty() {
            self.confirm_absent(session)?;
        }
        Ok(found)
    }

    fn one_kek(&self, session: &Session, id: &KekId) -> Result<Option<ObjectHandle>, CkError> {
        Ok(self.find_kek(session, &id.label())?.first().copied())
    }

    /// A search finds nothing when the session is not logged in, or when
    /// the token went away under a live session; neither may pass for "the
    /// key does not exist" (the key manager would take it for an already
    /// destroyed key). Either case is reported as a device error.
    fn confirm_absent(&self, session: &Session) -> Result<(), CkError> {
        use cryptoki::context::Function;
        // Whatever fails here means the device cannot be trusted to have
        // looked: report it as a device error.
        let device = |f| CkError::Pkcs11(RvError::DeviceError, f);
        let info = session
            .get_session_info()
            .map_err(|_| device(Function::GetSessionInfo))?;
        if !matches!(
            info.session_state(),
            SessionState::RwUser | SessionState::RoUser
        ) {
            return Err(CkError::Pkcs11(
                RvError::UserNotLoggedIn,
                Function::FindObjects,
            ));
        }
        let token = self
            .ctx
            .get_token_info(info.slot_id())
            .map_err(|_| device(Function::GetTokenInfo))?;
        if token.label() != self.token_label {
            return Err(device(Function::GetTokenInfo));
        }
        Ok(())
    }
}

impl Pkcs11KeyProvider {
    /// The token objects of class `class` labelled [`CHECKPOINT_KEY_LABEL`].
    fn checkpoint_objects(
        &self,
        session: &Session,
        class: ObjectClass,
    ) -> Result<Vec<ObjectHandle>, CkError> {
        let found = session.find_objects(&[
            Attribute::Class(class),
            Attribute::Token(true),
            Attribute::Label(CHECKPOINT_KEY_LABEL.as_bytes().to_vec()),
        ])?;
        if found.is_empty() {
            self.confirm_absent(session)?;
        }
        Ok(found)
    }

    /// Reads the public key of the checkpoint pair, if the token has one.
    fn read_checkpoint_key(
        &self,
        session: &Session,
    ) -> Result<Option<Result<CheckpointPublicKey, KeyError>>, CkError> {
        let Some(public) = self
            .checkpoint_objects(session, ObjectClass::PUBLIC_KEY)?
            .first()
            .copied()
        else {
            return Ok(None);
        };
        let attrs = session.get_attributes(public, &[AttributeType::EcPoint])?;
        let point = attrs.iter().find_map(|a| match a {
            Attribute::EcPoint(p) => Some(p.clone()),
            _ => None,
        });
        Ok(Some(match point {
            Some(p) => CheckpointPublicKey::from_ec_point_attribute(&p).map_err(KeyError::from),
            None => Err(KeyError::Config(format!(
                "the checkpoint public key on {} has no CKA_EC_POINT",
                self.where_()
            ))),
        }))
    }
}

/// A KEK lookup that may find nothing.
enum Found<T> {
    Yes(T),
    NoKek,
}

impl KeyProvider for Pkcs11KeyProvider {
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            kind: "pkcs11",
            location: format!("{} token \"{}\"", self.module.display(), self.token_label),
        }
    }

    fn generate_kek(&self, id: &KekId) -> Result<(), KeyError> {
        let label = id.label();
        let _alone = self.changing_objects();
        let out = self.with_session(
            "generate a key",
            |s| {
                if !self.find_kek(s, &label)?.is_empty() {
                    return Ok(false);
                }
                let template = [
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen(32.into()),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Modifiable(false),
                    Attribute::Wrap(true),
                    Attribute::Unwrap(true),
                    Attribute::Encrypt(false),
                    Attribute::Decrypt(false),
                    Attribute::Sign(false),
                    Attribute::Verify(false),
                    Attribute::Derive(false),
                    Attribute::Label(label.as_bytes().to_vec()),
                ];
                s.generate_key(&Mechanism::AesKeyGen, &template)?;
                Ok(true)
            },
            |e| {
                KeyError::Unavailable(format!(
                    "cannot generate key {label} on {}: {e}",
                    self.where_()
                ))
            },
        )?;
        if out {
            Ok(())
        } else {
            Err(KeyError::KekExists(id.label()))
        }
    }

    fn has_kek(&self, id: &KekId) -> Result<bool, KeyError> {
        let label = id.label();
        let _shared = self.sharing_objects();
        self.with_session(
            "find a key",
            |s| Ok(!self.find_kek(s, &label)?.is_empty()),
            |e| self.unavailable("find a key", &e),
        )
    }

    fn wrap(&self, id: &KekId, dek: &Dek) -> Result<Vec<u8>, KeyError> {
        let label = id.label();
        let _shared = self.sharing_objects();
        let out = self.with_session(
            "wrap a data key",
            |s| {
                let Some(kek) = self.one_kek(s, id)? else {
                    return Ok(Found::NoKek);
                };
                let mut template = vec![
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::Token(false),
                    Attribute::Private(true),
                    Attribute::Sensitive(false),
                    Attribute::Extractable(true),
                    Attribute::Value(dek.expose().to_vec()),
                ];
                let created = s.create_object(&template);
                for a in &mut template {
                    if let Attribute::Value(v) = a {
                        v.zeroize();
                    }
                }
                let object = created?;
                let wrapped = s.wrap_key(&Mechanism::AesKeyWrapPad, kek, object);
                let destroyed = s.destroy_object(object);
                let wrapped = wrapped?;
                destroyed?;
                Ok(Found::Yes(wrapped))
            },
            |e| {
                KeyError::Unavailable(format!(
                    "cannot wrap under {label} on {}: {e}",
                    self.where_()
                ))
            },
        )?;
        match out {
            Found::Yes(w) => Ok(w),
            Found::NoKek => Err(KeyError::KekNotFound(label)),
        }
    }

    fn unwrap(&self, id: &KekId, wrapped: &[u8]) -> Result<Dek, KeyError> {
        let label = id.label();
        if wrapped.len() != WRAPPED_DEK_LEN {
            return Err(KeyError::UnwrapRejected { kek: label });
        }
        let _shared = self.sharing_objects();
        let out = self.with_session(
            "unwrap a data key",
            |s| {
                let Some(kek) = self.one_kek(s, id)? else {
                    return Ok(Found::NoKek);
                };
                let template = [
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::Token(false),
                    Attribute::Private(true),
                    Attribute::Sensitive(false),
                    Attribute::Extractable(true),
                ];
                let object = s.unwrap_key(&Mechanism::AesKeyWrapPad, kek, wrapped, &template)?;
                let attrs = s.get_attributes(object, &[AttributeType::Value]);
                let destroyed = s.destroy_object(object);
                let mut attrs = attrs?;
                let mut value = None;
                for a in &mut attrs {
                    if let Attribute::Value(v) = a {
                        let bytes: Result<[u8; DEK_LEN], _> = v.as_slice().try_into();
                        v.zeroize();
                        value = bytes.ok();
                    }
                }
                destroyed?;
                Ok(Found::Yes(value))
            },
            // Any refusal of the blob (SoftHSM2 says CKR_GENERAL_ERROR for a
            // failed integrity check) is a rejection.
            |_| KeyError::UnwrapRejected { kek: label.clone() },
        )?;
        match out {
            Found::Yes(Some(mut bytes)) => {
                let dek = Dek::from_bytes(bytes);
                bytes.zeroize();
                Ok(dek)
            }
            Found::Yes(None) => Err(KeyError::UnwrapRejected { kek: label }),
            Found::NoKek => Err(KeyError::KekNotFound(label)),
        }
    }

    fn destroy_kek(&self, id: &KekId) -> Result<(), KeyError> {
        let label = id.label();
        let _alone = self.changing_objects();
        let found = self.with_session(
            "destroy a key",
            |s| {
                let handles = self.find_kek(s, &label)?;
                for h in &handles {
                    s.destroy_object(*h)?;
                }
                Ok(!handles.is_empty())
            },
            |e| KeyError::Unavailable(format!("cannot destroy {label} on {}: {e}", self.where_())),
        )?;
        if found {
            Ok(())
        } else {
            Err(KeyError::KekNotFound(id.label()))
        }
    }

    fn checkpoint_key(&self, create: bool) -> Result<Option<CheckpointPublicKey>, KeyError> {
        let found = {
            let _shared = self.sharing_objects();
            self.with_session(
                "find the checkpoint key",
                |s| self.read_checkpoint_key(s),
                |e| self.unavailable("find the checkpoint key", &e),
            )?
        };
        if let Some(key) = found {
            return key.map(Some);
        }
        if !create {
            return Ok(None);
        }
        let _alone = self.changing_objects();
        let made = self.with_session(
            "generate the checkpoint key",
            |s| {
                // Another broker process on the token may have made it.
                if let Some(key) = self.read_checkpoint_key(s)? {
                    return Ok(key);
                }
                let label = Attribute::Label(CHECKPOINT_KEY_LABEL.as_bytes().to_vec());
                let public = [
                    Attribute::Class(ObjectClass::PUBLIC_KEY),
                    Attribute::KeyType(KeyType::EC),
                    Attribute::Token(true),
                    Attribute::Private(false),
                    Attribute::Verify(true),
                    Attribute::Encrypt(false),
                    Attribute::Wrap(false),
                    Attribute::EcParams(P256_EC_PARAMS.to_vec()),
                    label.clone(),
                ];
                let private = [
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::KeyType(KeyType::EC),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Sign(true),
                    Attribute::Decrypt(false),
                    Attribute::Derive(false),
                    Attribute::Unwrap(false),
                    label,
                ];
                s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)?;
                Ok(self.read_checkpoint_key(s)?.unwrap_or_else(|| {
                    Err(KeyError::Unavailable(format!(
                        "{} made the checkpoint key pair but does not find it",
                        self.where_()
                    )))
                }))
            },
            |e| {
                KeyError::Unavailable(format!(
                    "cannot generate the checkpoint key (ECDSA P-256) on {}: {e}",
                    self.where_()
                ))
            },
        )?;
        made.map(Some)
    }

    fn sign_checkpoint(&self, message: &[u8]) -> Result<[u8; SIGNATURE_LEN], KeyError> {
        let hash = digest(message);
        let _shared = self.sharing_objects();
        let signed = self.with_session(
            "sign a checkpoint",
            |s| {
                let Some(key) = self
                    .checkpoint_objects(s, ObjectClass::PRIVATE_KEY)?
                    .first()
                    .copied()
                else {
                    return Ok(None);
                };
                s.sign(&Mechanism::Ecdsa, key, &hash).map(Some)
            },
            |e| {
                KeyError::Unavailable(format!(
                    "cannot sign a checkpoint on {}: {e}",
                    self.where_()
                ))
            },
        )?;
        let sig = signed.ok_or_else(|| KeyError::KekNotFound(CHECKPOINT_KEY_LABEL.into()))?;
        sig.as_slice().try_into().map_err(|_| {
            KeyError::Unavailable(format!(
                "{} returned a {}-byte ECDSA P-256 signature, not {SIGNATURE_LEN}",
                self.where_(),
                sig.len()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_takes_the_pin_by_reference_only() {
        let c: Pkcs11Config = serde_json::from_str(
            r#"{"module":"/m.so","token_label":"t","pin":{"file":"/etc/pin"}}"#,
        )
        .expect("file source");
        assert_eq!(c.pin, PinSource::File(PathBuf::from("/etc/pin")));
        let c: Pkcs11Config =
            serde_json::from_str(r#"{"module":"/m.so","token_label":"t","pin":{"env":"HSM_PIN"}}"#)
                .expect("env source");
        assert_eq!(c.pin, PinSource::Env("HSM_PIN".to_owned()));
        // An inline PIN has nowhere to go.
        for inline in [
            r#"{"module":"/m.so","token_label":"t","pin":"1234"}"#,
            r#"{"module":"/m.so","token_label":"t","pin":{"value":"1234"}}"#,
            r#"{"module":"/m.so","token_label":"t","pin":{"env":"X"},"user_pin":"1234"}"#,
        ] {
            assert!(
                serde_json::from_str::<Pkcs11Config>(inline).is_err(),
                "{inline}"
            );
        }
    }
}

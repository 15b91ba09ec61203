//! Admin streams: one request, authorized, acted on, answered.
//!
//! [`serve`] reads the request and dispatches it to the handler of its
//! area: `topics.rs`, `acls.rs`, `keys.rs`, `producers.rs`, `audit.rs`,
//! `cluster.rs`, and the
//! access service for access requests and recipients. Each handler checks
//! the caller's permission and records its own audit event.
//!
//! Changes to topics and ACLs are serialized by the broker's admin lock and
//! committed durably to the metadata store before the answer is sent.
//! Metadata writes (each an fsync) run on the blocking pool.

use strongbox_protocol::ErrorCode;
use strongbox_protocol::frames::admin::{AdminRequest, AdminResponse};
use strongbox_protocol::session::admin::BrokerAdminStream;

use crate::error::BrokerError;
use crate::services::access::{recipients, requests};
use crate::services::authz::Authorizer;
use crate::services::caller::ConnCtx;
use crate::transport::stream_io::{FrameReader, FrameWriter, StreamError, end_with_error};

mod acls;
mod audit;
mod cluster;
mod keys;
mod producers;
mod topics;

pub use cluster::{SINGLE_NODE_TERM, log_cluster_role};
pub use topics::ensure_topic;
pub(crate) use topics::{close_topic, open_topic};

/// The topic name checked for broker-wide permissions (keys, ACL listing):
/// a rule must name `*` to grant them.
pub(super) const BROKER_WIDE: &str = "*";

/// Serves an admin stream whose first frame was `request`.
///
/// The answer goes out as soon as it is ready; the stream then stays open
/// until the client finishes its send side, so that a second frame on it
/// is answered with `Error` `protocol_violation` (an admin stream carries
/// one request) rather than silently dropped.
pub async fn serve(
    ctx: ConnCtx,
    request: AdminRequest,
    mut reader: FrameReader,
    mut writer: FrameWriter,
) {
    let mut session = BrokerAdminStream::new();
    if let Err(v) = session.handle_frame(strongbox_protocol::frame::Frame::Request(request.clone()))
    {
        end_with_error(&mut writer, &mut reader, v.code, &v.message).await;
        return;
    }
    let kind = request.frame_type().name();
    let answer = handle(&ctx, request).await;
    if let Err(e) = &answer {
        tracing::info!(request = kind, code = %e.code, error = %e.message, "admin request refused");
    }
    let frame = session.respond(answer.map_err(|e| e.to_frame(0)));
    match writer.send(&frame).await {
        Ok(()) => {}
        Err(StreamError::Encode(e)) => {
            // An answer larger than the client accepts (a long listing):
            // say so with a code rather than leave the client without one.
            let message = format!(
                "the answer to {kind} does not fit the client's max_frame_size ({e}); \
                 narrow the request or connect with a larger max_frame_size"
            );
            tracing::info!(request = kind, "{message}");
            end_with_error(&mut writer, &mut reader, ErrorCode::FrameTooLarge, &message).await;
            return;
        }
        Err(_) => return,
    }
    let mut shutdown = ctx.shutdown.clone();
    tokio::select! {
        next = reader.next() => match next {
            Ok(None) => {}
            Ok(Some(frame)) => {
                if let Err(v) = session.handle_frame(frame) {
                    end_with_error(&mut writer, &mut reader, v.code, &v.message).await;
                    return;
                }
            }
            Err(e) => {
                if let Some(code) = e.code() {
                    end_with_error(&mut writer, &mut reader, code, &e.to_string()).await;
                }
                return;
            }
        },
        () = crate::shutdown::stopped(&mut shutdown) => {}
    }
    writer
        .finish_delivered(ctx.state.config.listener.shutdown_grace.0)
        .await;
}

/// Hands `request` to its area's handler; each handler authorizes the
/// request and records its audit event.
async fn handle(ctx: &ConnCtx, request: AdminRequest) -> Result<AdminResponse, BrokerError> {
    match request {
        AdminRequest::WhoAmI => Ok(who_am_i(ctx)),
        AdminRequest::CreateTopic { name, config } => topics::create(ctx, name, config).await,
        AdminRequest::DeleteTopic { name } => topics::delete(ctx, name).await,
        AdminRequest::DescribeTopic { name } => topics::describe(ctx, name).await,
        AdminRequest::ListTopics { prefix } => topics::list(ctx, prefix).await,
        AdminRequest::TopicRecover {
            topic,
            partition,
            accept_loss,
        } => topics::recover(ctx, topic, partition, accept_loss).await,
        AdminRequest::AclGrant { rule } => acls::grant(ctx, rule).await,
        AdminRequest::AclRevoke { rule } => acls::revoke(ctx, rule).await,
        AdminRequest::AclList { principal, topic } => acls::list(ctx, principal, topic).await,
        AdminRequest::InitProducer { producer_id } => producers::init(ctx, producer_id).await,
        AdminRequest::KeyStatus { topic } => keys::status(ctx, topic).await,
        AdminRequest::KeyRotate { topic } => keys::rotate(ctx, topic).await,
        AdminRequest::KeyRewrap {
            topic,
            from_version,
        } => keys::rewrap(ctx, topic, from_version).await,
        AdminRequest::KeyRetire { topic, version } => keys::retire(ctx, topic, version).await,
        AdminRequest::KeyCompromised { topic, version } => {
            keys::compromised(ctx, topic, version).await
        }
        AdminRequest::KeyDestroy {
            topic,
            version,
            force,
        } => keys::destroy(ctx, topic, version, force).await,
        AdminRequest::AuditHead => audit::head(ctx).await,
        AdminRequest::AccessRequest {
            topic,
            operations,
            reason,
            public_key,
        } => requests::request(ctx, topic, operations, reason, public_key).await,
        AdminRequest::AccessList { pending_only } => {
            requests::list(ctx, &mut Authorizer::new(ctx), pending_only).await
        }
        AdminRequest::AccessApprove {
            id,
            ttl_ms,
            recipient_entry,
        } => requests::approve(ctx, &mut Authorizer::new(ctx), id, ttl_ms, recipient_entry).await,
        AdminRequest::AccessDeny { id, reason } => {
            requests::deny(ctx, &mut Authorizer::new(ctx), id, reason).await
        }
        AdminRequest::RecipientList { topic } => {
            recipients::list(ctx, &mut Authorizer::new(ctx), topic).await
        }
        AdminRequest::RecipientPut { topic, entry } => {
            recipients::put(ctx, &mut Authorizer::new(ctx), topic, entry).await
        }
        AdminRequest::RecipientRemove { topic, recipient } => {
            recipients::remove(ctx, &mut Authorizer::new(ctx), topic, recipient).await
        }
        AdminRequest::Metadata { topics } => cluster::metadata(ctx, topics).await,
        AdminRequest::ClusterStatus => cluster::status(ctx).await,
        AdminRequest::ClusterAddNode {
            id,
            peer_addr,
            client_addr,
        } => cluster::add_node(ctx, id, peer_addr, client_addr).await,
        AdminRequest::ClusterRemoveNode { id } => cluster::remove_node(ctx, id).await,
        other => Err(BrokerError::new(
            ErrorCode::InvalidRequest,
            format!(
                "{} is not supported by this broker version",
                other.frame_type().name()
            ),
        )),
    }
}

/// The caller's principal as the broker sees it.
fn who_am_i(ctx: &ConnCtx) -> AdminResponse {
    AdminResponse::WhoAmI {
        principal: ctx.principal.clone(),
        broker_id: ctx.state.config.broker.id.clone(),
        superuser: ctx.state.acl.snapshot().is_superuser(&ctx.principal),
    }
}

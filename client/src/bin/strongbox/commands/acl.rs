//! `strongbox acl ...`.

use serde_json::Value;
use strongbox_client::protocol::clock::now_ms;
use strongbox_client::protocol::model::{AclEffect, AclRule};

use crate::args::millis;
use crate::cli::{AclCommand, AclRevokeArgs, AclRuleArgs, GlobalArgs};
use crate::commands::Out;
use crate::{connect, output};

fn rule(args: AclRuleArgs) -> AclRule {
    let expires_at = args
        .expires
        .map(|d| now_ms().saturating_add(i64::try_from(millis(d)).unwrap_or(i64::MAX)));
    AclRule {
        principal: args.principal,
        topic: args.topic,
        operations: args.operations,
        effect: if args.deny {
            AclEffect::Deny
        } else {
            AclEffect::Allow
        },
        expires_at,
    }
}

/// The rule pattern `acl revoke` sends: the broker takes `operations` out
/// of the runtime rules with this principal, topic and effect.
fn revoke_target(args: AclRevokeArgs) -> AclRule {
    AclRule {
        principal: args.principal,
        topic: args.topic,
        operations: args.operations,
        effect: if args.deny {
            AclEffect::Deny
        } else {
            AclEffect::Allow
        },
        expires_at: None,
    }
}

pub(crate) async fn run(global: &GlobalArgs, command: AclCommand) -> anyhow::Result<()> {
    let client = connect::connect(global).await?;
    let admin = client.admin();
    let result = async {
        let rules = match command {
            AclCommand::Grant(args) => admin.acl_grant(rule(args)).await?,
            AclCommand::Revoke(args) => admin.acl_revoke(revoke_target(args)).await?,
            AclCommand::List { principal, topic } => {
                admin
                    .acl_list(principal.as_deref(), topic.as_deref())
                    .await?
            }
        };
        let mut out = Out::new();
        if global.json {
            out.json(&Value::Array(rules.iter().map(output::acl_json).collect()))?;
        } else {
            out.write(&output::acl_table(&rules))?;
        }
        anyhow::Ok(())
    }
    .await;
    client.close().await;
    result
}

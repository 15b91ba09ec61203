//! `strongbox topic ...`.

use serde_json::Value;
use strongbox_client::protocol::model::TopicConfig;

use crate::cli::{GlobalArgs, TopicCommand};
use crate::commands::Out;
use crate::{connect, output};

pub(crate) async fn run(global: &GlobalArgs, command: TopicCommand) -> anyhow::Result<()> {
    let client = connect::connect(global).await?;
    let admin = client.admin();
    let mut out = Out::new();
    let result = async {
        match command {
            TopicCommand::Create(args) => {
                let config = TopicConfig {
                    partitions: args.partitions,
                    durability: args.durability,
                    retention_ms: args.retention,
                    retention_bytes: args.retention_bytes,
                    segment_bytes: None,
                    segment_ms: None,
                    dedicated_kek: args.dedicated_kek,
                };
                let topic = admin.create_topic(args.name, config).await?;
                if global.json {
                    out.json(&output::topic_json(&topic))?;
                } else {
                    out.write(&output::topic_text(&topic))?;
                }
            }
            TopicCommand::List { prefix } => {
                let topics = admin.list_topics(prefix.as_deref()).await?;
                if global.json {
                    out.json(&Value::Array(
                        topics.iter().map(output::topic_json).collect(),
                    ))?;
                } else {
                    out.write(&output::topics_table(&topics))?;
                }
            }
            TopicCommand::Describe { name } => {
                let topic = admin.describe_topic(name.clone()).await?;
                if global.json {
                    // Where each partition is served, from Metadata (absent
                    // from a broker that does not know the request).
                    let placement = admin.metadata(Some(vec![name.clone()])).await.ok();
                    let mut value = output::topic_json(&topic);
                    let placed = placement.as_ref().and_then(|m| m.topic(&name));
                    if let Some(parts) = value
                        .get_mut("partition_state")
                        .and_then(Value::as_array_mut)
                    {
                        for p in parts.iter_mut() {
                            let index = p.get("partition").and_then(Value::as_u64);
                            let found = placed.and_then(|t| {
                                t.partitions
                                    .iter()
                                    .find(|x| Some(u64::from(x.partition)) == index)
                            });
                            if let Some(obj) = p.as_object_mut() {
                                obj.insert(
                                    "leader".into(),
                                    serde_json::json!(found.and_then(|f| f.leader)),
                                );
                                obj.insert(
                                    "replicas".into(),
                                    serde_json::json!(
                                        found.map(|f| f.replicas.clone()).unwrap_or_default()
                                    ),
                                );
                            }
                        }
                    }
                    out.json(&value)?;
                } else {
                    out.write(&output::topic_text(&topic))?;
                }
            }
            TopicCommand::Recover {
                name,
                partition,
                accept_loss,
            } => {
                if !accept_loss {
                    anyhow::bail!(
                        "recovering {name}/{partition} accepts the loss of the records it no \
                         longer has: pass --accept-loss to confirm"
                    );
                }
                let topic = admin.recover_partition(name, partition, true).await?;
                if global.json {
                    out.json(&output::topic_json(&topic))?;
                } else {
                    out.write(&output::topic_text(&topic))?;
                }
            }
            TopicCommand::Delete { name } => {
                let message = admin.delete_topic(name.clone()).await?;
                if global.json {
                    out.json(&serde_json::json!({"deleted": name, "message": message}))?;
                } else if message.is_empty() {
                    out.line(&format!("deleted topic {name}"))?;
                } else {
                    out.line(&message)?;
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    client.close().await;
    result
}

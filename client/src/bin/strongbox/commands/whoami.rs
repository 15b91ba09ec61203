//! `strongbox whoami`.

use crate::cli::GlobalArgs;
use crate::commands::Out;
use crate::{connect, output};

pub(crate) async fn run(global: &GlobalArgs) -> anyhow::Result<()> {
    let client = connect::connect(global).await?;
    let result = client.admin().whoami().await;
    // The group of the connection the answer came on (a reconnect in
    // between would have gone through a new handshake under the same
    // policy).
    let group = client.key_exchange_group();
    client.close().await;
    let me = result?;
    let mut out = Out::new();
    if global.json {
        out.json(&output::whoami_json(&me, group.as_deref()))?;
    } else {
        out.write(&output::whoami_text(&me, group.as_deref()))?;
    }
    Ok(())
}

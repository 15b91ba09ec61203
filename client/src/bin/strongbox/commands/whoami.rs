//! `strongbox whoami`.

use crate::cli::GlobalArgs;
use crate::commands::Out;
use crate::{connect, output};

pub(crate) async fn run(global: &GlobalArgs) -> anyhow::Result<()> {
    let client = connect::connect(global).await?;
    let result = client.admin().whoami().await;
    client.close().await;
    let me = result?;
    let mut out = Out::new();
    if global.json {
        out.json(&output::whoami_json(&me))?;
    } else {
        out.write(&output::whoami_text(&me))?;
    }
    Ok(())
}

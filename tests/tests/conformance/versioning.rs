//! docs/PROTOCOL.md, "Versioning".

use anyhow::{Result, ensure};
use strongbox_protocol::frame::{DEFAULT_MAX_FRAME_SIZE, Frame};
use strongbox_protocol::frames::admin::AdminRequest;
use strongbox_protocol::frames::control::Hello;

use crate::harness::*;

/// [N1] "Versioning": feature bits the broker does not know are ignored:
/// `Welcome.features` holds only the bits of `Hello.features` it
/// implements (`leader_hints`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n1_unknown_feature_bits_are_ignored() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        for features in [1u64, 2, 0x8000_0000_0000_0000, u64::MAX] {
            let conn = broker.connect(ALICE).await?;
            let hello = Frame::Hello(Hello {
                versions: vec![1],
                client_name: "features".into(),
                max_frame_size: DEFAULT_MAX_FRAME_SIZE,
                features,
            });
            let s = Session::establish(conn, hello).await?;
            let expected = features & strongbox_protocol::features::LEADER_HINTS;
            ensure!(
                s.welcome.features == expected,
                "{features:#x}: {:?}",
                s.welcome
            );
            s.ok(AdminRequest::WhoAmI).await?;
        }
        Ok(())
    })
    .await
}

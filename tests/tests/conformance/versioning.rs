//! docs/PROTOCOL.md, "Versioning".

use anyhow::{Result, ensure};
use strongbox_protocol::frame::{DEFAULT_MAX_FRAME_SIZE, Frame};
use strongbox_protocol::frames::admin::AdminRequest;
use strongbox_protocol::frames::control::Hello;

use crate::harness::*;

/// [N1] "Versioning": feature bits the broker does not know are ignored:
/// `Welcome.features` is 0 whatever `Hello.features` holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n1_unknown_feature_bits_are_ignored() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        for features in [1u64, 0x8000_0000_0000_0000, u64::MAX] {
            let conn = broker.connect(ALICE).await?;
            let hello = Frame::Hello(Hello {
                versions: vec![1],
                client_name: "features".into(),
                max_frame_size: DEFAULT_MAX_FRAME_SIZE,
                features,
            });
            let s = Session::establish(conn, hello).await?;
            ensure!(s.welcome.features == 0, "{:?}", s.welcome);
            s.ok(AdminRequest::WhoAmI).await?;
        }
        Ok(())
    })
    .await
}

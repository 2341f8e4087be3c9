//! The runtime's volume calls on the real Docker engine, which the disk
//! bound relies on to empty a pip cache: a named volume is measured, kept
//! while a container (even an exited one) mounts it, and removed after.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ci_controller::config::DEFAULT_IMAGE;
use ci_controller::container_spec::VolumeMount;
use ci_controller::runtime::{ContainerRuntime, ContainerSpec, Removal, LABEL_INSTALLATION};
use ci_controller::DockerRuntime;
use futures::StreamExt;
use uuid::Uuid;

/// A container deadline, far beyond what writing 3 MiB takes.
const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_volume_is_measured_kept_while_mounted_and_then_removed() {
    let runtime = DockerRuntime::connect().await.unwrap();
    let prefix = format!("ci-test-volumes-{}-", Uuid::new_v4().simple());
    let volume = format!("{prefix}pip-cache");
    let labels = BTreeMap::from([(LABEL_INSTALLATION.to_string(), prefix.clone())]);
    let spec = ContainerSpec {
        name: format!("{prefix}writer"),
        image: DEFAULT_IMAGE.to_string(),
        cmd: [
            "sh",
            "-c",
            "head -c 3145728 /dev/zero > ~/.cache/pip/filler && sync",
        ]
        .map(String::from)
        .to_vec(),
        labels: labels.clone(),
        network_mode: "none".into(),
        volumes: vec![VolumeMount {
            name: Some(volume.clone()),
            // Where jobs mount it: the image makes the folder the job
            // user's, and a new volume takes its owner from it.
            target: "/home/runner/.cache/pip".into(),
            labels,
        }],
        stdin_once: true,
        ..ContainerSpec::default()
    };
    let id = runtime.create(&spec).await.unwrap();
    runtime
        .start_with_input(&id, futures::stream::empty().boxed())
        .await
        .unwrap();
    let began = Instant::now();
    let exited = loop {
        let state = runtime.inspect(&id).await.unwrap().unwrap();
        if !state.running {
            break state;
        }
        assert!(began.elapsed() < DEADLINE, "the writer did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(exited.exit_code, Some(0), "{exited:?}");

    let size = runtime.volume_size(&volume).await.unwrap();
    assert!(
        size.is_some_and(|bytes| bytes >= 3 << 20),
        "measured {size:?}"
    );
    assert_eq!(
        runtime.remove_volume(&volume).await.unwrap(),
        Removal::InUse,
        "an exited container still mounts it"
    );
    runtime.remove(&id).await.unwrap();
    assert_eq!(
        runtime.remove_volume(&volume).await.unwrap(),
        Removal::Removed
    );
    assert_eq!(
        runtime.remove_volume(&volume).await.unwrap(),
        Removal::Missing
    );
    assert_eq!(runtime.volume_size(&volume).await.unwrap(), None);
}

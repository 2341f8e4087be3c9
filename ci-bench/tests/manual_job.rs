//! The benchmark's by-hand baseline against the real Docker engine: the
//! container `docker create` makes from the controller's spec is the one the
//! controller's runtime makes from it, and the job by hand passes with its
//! project on standard input.

#![allow(clippy::unwrap_used)]

use ci_bench::docker::{create_args, docker, project_tar, ManualJob, LABEL_BENCH};
use ci_controller::container_spec::JobInstall;
use ci_controller::environment::LocalEntry;
use ci_controller::{ContainerRuntime, ControllerConfig, DockerRuntime};
use serde_json::Value;
use uuid::Uuid;

fn manual_job(prefix: &str) -> ManualJob {
    let mut config = ControllerConfig {
        network_mode: "none".into(),
        ..ControllerConfig::default()
    };
    config.set_container_prefix(prefix);
    ManualJob {
        config,
        bench_label: prefix.to_string(),
        user: ci_common::UserId::random(),
        install: JobInstall::default(),
    }
}

fn project(files: &[(&str, &str)]) -> Vec<u8> {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, text) in files {
        zip.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(text.as_bytes()).unwrap();
    }
    project_tar(&zip.finish().unwrap().into_inner()).unwrap()
}

const TEST_OK: (&str, &str) = ("test_ok.py", "def test_ok():\n    assert 1 + 1 == 2\n");

fn passing_project() -> Vec<u8> {
    project(&[TEST_OK])
}

/// What the engine made of a container's request: everything a job's
/// confinement and behaviour depend on, without what names one container.
async fn as_created(id: &str) -> Value {
    let inspected: Value = serde_json::from_str(&docker(&["inspect", id]).await.unwrap()).unwrap();
    let c = &inspected[0];
    let host = &c["HostConfig"];
    let config = &c["Config"];
    let mut mounts: Vec<Value> = c["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            // An anonymous volume's name is random; its being anonymous is not.
            let named = m["Name"].as_str().is_some_and(|n| n.len() != 64);
            serde_json::json!({
                "type": m["Type"],
                "destination": m["Destination"],
                "name": if named { m["Name"].clone() } else { Value::Null },
                "rw": m["RW"],
            })
        })
        .collect();
    // The engine lists the environment (the image's and the container's,
    // merged) and the mounts in no fixed order.
    let mut env: Vec<Value> = config["Env"].as_array().cloned().unwrap_or_default();
    env.sort_by_key(|v| v.as_str().unwrap_or_default().to_string());
    mounts.sort_by_key(|m| m["destination"].as_str().unwrap_or_default().to_string());
    serde_json::json!({
        "image": config["Image"],
        "cmd": config["Cmd"],
        "user": config["User"],
        "working_dir": config["WorkingDir"],
        "labels": config["Labels"],
        "env": env,
        "open_stdin": config["OpenStdin"],
        "stdin_once": config["StdinOnce"],
        "tty": config["Tty"],
        "network_mode": host["NetworkMode"],
        "memory": host["Memory"],
        "memory_swap": host["MemorySwap"],
        "pids_limit": host["PidsLimit"],
        "cpu_shares": host["CpuShares"],
        "cap_drop": host["CapDrop"],
        "security_opt": host["SecurityOpt"],
        "read_only": host["ReadonlyRootfs"],
        "tmpfs": host["Tmpfs"],
        "log_driver": host["LogConfig"]["Type"],
        "mounts": mounts,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_the_container_the_controller_creates() {
    let prefix = format!("cibench-{}-", &Uuid::new_v4().simple().to_string()[..8]);
    let runtime = DockerRuntime::connect()
        .await
        .expect("a Docker engine (scripts/docker-engine.sh)");
    // On a read-only root, and (installing its project) on a writable one
    // with the pip cache.
    let installs = [
        JobInstall::default(),
        JobInstall {
            local: vec![LocalEntry {
                path: ".".into(),
                extras: vec![],
                editable: true,
                dependencies_known: true,
            }],
            pip_cache: true,
        },
    ];
    for (i, install) in installs.into_iter().enumerate() {
        let manual = ManualJob {
            install,
            ..manual_job(&prefix)
        };
        let spec = manual.spec();
        assert_eq!(spec.read_only_rootfs, i == 0);

        let by_runtime = runtime.create(&spec).await.unwrap();
        let mut cli_spec = spec.clone();
        cli_spec.name = format!("{}-cli", spec.name);
        let args = create_args(&cli_spec);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let by_cli = docker(&args).await.map(|out| out.trim().to_string());

        let runtime_made = as_created(&by_runtime).await;
        let cli_made = match &by_cli {
            Ok(id) => Some(as_created(id).await),
            Err(_) => None,
        };
        runtime.remove(&by_runtime).await.unwrap();
        if let Ok(id) = &by_cli {
            runtime.remove(id).await.unwrap();
        }
        if let Some(volume) = spec.volumes.iter().find_map(|v| v.name.as_deref()) {
            ci_testkit::docker::remove_volumes(&[volume.to_string()]);
        }
        by_cli.unwrap();
        assert_eq!(cli_made.unwrap(), runtime_made, "project {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_by_hand_gets_its_project_on_stdin_and_passes() {
    let prefix = format!("cibench-{}-", &Uuid::new_v4().simple().to_string()[..8]);
    let manual = manual_job(&prefix);
    let run = manual.run(&passing_project(), None).await;
    ci_testkit::docker::remove_labelled(LABEL_BENCH, &prefix);
    let run = run.unwrap();
    let output = String::from_utf8_lossy(&run.output);
    assert_eq!(run.exit_code, Some(0), "{output}");
    assert!(output.contains("1 passed"), "{output}");
}

//! Docker as the tests see it: an installation's containers by their label,
//! and sweeping what an installation left behind (its containers, their
//! volumes, its pip cache volume).
//!
//! The `docker` CLI, not the engine API: it is what an operator would use to
//! check, and it keeps the kit free of an async Docker client.

use std::path::Path;
use std::process::{Command, Stdio};

use ci_common::JobId;

use crate::error::KitError;

/// The label the controller puts on every container of an installation.
pub const LABEL_INSTALLATION: &str = "ci.installation";
/// The label naming a container's job.
pub const LABEL_JOB: &str = "ci.job-id";

/// A container as `docker ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub name: String,
    pub state: String,
    pub job_id: Option<JobId>,
}

/// The containers carrying `label=value`.
pub fn containers_labelled(label: &str, value: &str) -> Result<Vec<ContainerInfo>, KitError> {
    let out = Command::new("docker")
        .args(["ps", "-a", "--no-trunc", "--filter"])
        .arg(format!("label={label}={value}"))
        .args([
            "--format",
            &format!("{{{{.Names}}}}\t{{{{.State}}}}\t{{{{.Label \"{LABEL_JOB}\"}}}}"),
        ])
        .output()
        .map_err(KitError::io("cannot run `docker ps`"))?;
    if !out.status.success() {
        return Err(KitError::Setup(format!(
            "`docker ps` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let mut fields = line.split('\t');
            ContainerInfo {
                name: fields.next().unwrap_or_default().to_string(),
                state: fields.next().unwrap_or_default().to_string(),
                job_id: fields.next().and_then(|id| id.parse().ok()),
            }
        })
        .collect())
}

/// The containers of the installation with container prefix `prefix`.
pub fn installation_containers(prefix: &str) -> Result<Vec<ContainerInfo>, KitError> {
    containers_labelled(LABEL_INSTALLATION, prefix)
}

/// Removes (with their anonymous volumes) the containers carrying
/// `label=value`; best effort, for clean-up paths.
pub fn remove_labelled(label: &str, value: &str) {
    let ids = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label={label}={value}"))
        .output();
    if let Ok(ids) = ids {
        let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        remove_containers(&ids);
    }
}

fn remove_containers(ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    let _ = Command::new("docker")
        .args(["rm", "-f", "-v"])
        .args(ids)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Removes volumes by name; best effort.
pub fn remove_volumes(names: &[String]) {
    if names.is_empty() {
        return;
    }
    let _ = Command::new("docker")
        .args(["volume", "rm", "-f"])
        .args(names)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Removes the volumes carrying `label=value` (the pip cache volumes, one per
/// user, carry the installation's label); best effort.
pub fn remove_labelled_volumes(label: &str, value: &str) {
    let names = Command::new("docker")
        .args(["volume", "ls", "-q", "--filter"])
        .arg(format!("label={label}={value}"))
        .output();
    if let Ok(names) = names {
        let names: Vec<String> = String::from_utf8_lossy(&names.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        remove_volumes(&names);
    }
}

/// The images carrying `label=value` (an installation's dependency
/// environments carry its label).
pub fn images_labelled(label: &str, value: &str) -> Vec<String> {
    let ids = Command::new("docker")
        .args(["image", "ls", "-q", "--no-trunc", "--filter"])
        .arg(format!("label={label}={value}"))
        .output();
    match ids {
        Ok(ids) => {
            let mut ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            ids.dedup();
            ids
        }
        Err(_) => Vec::new(),
    }
}

/// Removes the images carrying `label=value`; best effort.
pub fn remove_labelled_images(label: &str, value: &str) {
    let ids = images_labelled(label, value);
    if ids.is_empty() {
        return;
    }
    let _ = Command::new("docker")
        .args(["image", "rm", "-f"])
        .args(&ids)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Removes an installation's containers, its pip cache volumes and its
/// dependency environments.
pub fn remove_installation(prefix: &str) {
    remove_labelled(LABEL_INSTALLATION, prefix);
    remove_labelled_volumes(LABEL_INSTALLATION, prefix);
    remove_labelled_images(LABEL_INSTALLATION, prefix);
}

/// The id of the process that made an installation, from a prefix (or a
/// volume name starting with it) of the form `<start><pid>-<random>-`.
pub fn owner_pid(installation: &str, start: &str) -> Option<u32> {
    installation
        .strip_prefix(start)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// A container prefix `<start><this process's id>-<random>-`, which
/// [`sweep_dead_installations`] can tell apart once this process is gone.
pub fn owned_prefix(start: &str) -> String {
    let short = uuid::Uuid::new_v4().simple().to_string();
    format!("{start}{}-{}-", std::process::id(), &short[..8])
}

/// Removes the containers and volumes of installations whose prefix starts
/// with `start` and whose owning process is gone: a test killed from
/// outside (a harness timeout) had no chance to clean up after itself.
/// Installations of live processes, and anything else, are left alone.
pub fn sweep_dead_installations(start: &str) {
    let dead = |installation: &str| {
        owner_pid(installation, start)
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let listed = Command::new("docker")
        .args(["ps", "-a", "--filter"])
        .arg(format!("label={LABEL_INSTALLATION}"))
        .args([
            "--format",
            &format!("{{{{.ID}}}}\t{{{{.Label \"{LABEL_INSTALLATION}\"}}}}"),
        ])
        .output();
    if let Ok(listed) = listed {
        let stale: Vec<String> = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .filter(|(_, installation)| dead(installation))
            .map(|(id, _)| id.to_string())
            .collect();
        remove_containers(&stale);
    }
    // Environment images are tagged `<key>-<installation>`.
    let images = Command::new("docker")
        .args(["image", "ls", "--format", "{{.ID}}\t{{.Tag}}", "--filter"])
        .arg(format!("label={LABEL_INSTALLATION}"))
        .output();
    if let Ok(images) = images {
        let stale: Vec<String> = String::from_utf8_lossy(&images.stdout)
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .filter(|(_, tag)| tag.split_once('-').is_some_and(|(_, i)| dead(i)))
            .map(|(id, _)| id.to_string())
            .collect();
        if !stale.is_empty() {
            let _ = Command::new("docker")
                .args(["image", "rm", "-f"])
                .args(&stale)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    let volumes = Command::new("docker")
        .args(["volume", "ls", "--format", "{{.Name}}", "--filter"])
        .arg(format!("name={start}"))
        .output();
    if let Ok(volumes) = volumes {
        let stale: Vec<String> = String::from_utf8_lossy(&volumes.stdout)
            .lines()
            .filter(|name| dead(name))
            .map(str::to_string)
            .collect();
        remove_volumes(&stale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installations_name_their_process() {
        let start = "citest-";
        assert_eq!(owner_pid("citest-4242-0a1b2c3d-", start), Some(4242));
        assert_eq!(
            owner_pid("citest-4242-0a1b2c3d-ci-pip-cache", start),
            Some(4242)
        );
        assert_eq!(owner_pid("ciproc-4242-", start), None);
        assert_eq!(owner_pid("citest-abc-", start), None);
        assert_eq!(owner_pid("", start), None);
        let mine = owned_prefix(start);
        assert_eq!(owner_pid(&mine, start), Some(std::process::id()));
    }
}

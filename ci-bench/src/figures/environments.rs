//! Figure 14: dependency environments, on a project with real dependencies
//! (`attrs` with `hypothesis`, from PyPI over the bridge network), each
//! against a baseline measured in the same run, in interleaved pairs (ABBA):
//! - a later submit (the environment is there) ÷ pytest alone by hand in a
//!   container whose image already has the dependencies (made by hand with
//!   `docker run … pip install` and `docker commit`);
//! - a first submit (`--fresh-env`: the environment is built) ÷ the same
//!   install and pytest by hand in one container from the runner image;
//! - a later submit of a src-layout project that installs itself (`.`)
//!   ÷ pytest alone by hand in that image, the project on `PYTHONPATH`;
//! - what a hit adds to `ci submit test` over the same job without
//!   requirements (a trivial test with `attrs` only, which pytest does not
//!   load: only the service's work differs).
//!
//! pip's download cache is warm on both sides (the preparation's volume and
//! the by-hand one are filled by an untimed run first), so the figure weighs
//! the service's work, not PyPI's day. After each `ci submit test` the
//! figure waits, untimed, until the controller has tidied up (the job's and
//! the preparation's containers removed, a superseded build evicted), so
//! that work never lands in the next timed step of either side. Not in
//! `--quick`: it needs PyPI.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use ci_controller::config::{JOB_SCRIPT, UNPACK_FROM_STDIN};
use ci_controller::container_spec::{ContainerSpec, VolumeMount, JOB_HOME, WORKSPACE_DIR};
use ci_controller::environment_cache::LABEL_ENVIRONMENT_KEY;
use ci_controller::runtime::LABEL_INSTALLATION;

use super::overhead::{by_hand_as, ci_submit_with};
use super::{ms, progress, Context};
use crate::docker::{docker, project_tar, ManualJob, LABEL_BENCH};
use crate::error::{BenchError, Result};
use crate::fixtures::{attrs_hypothesis, installs_itself, Project, ATTRS_HYPOTHESIS};
use crate::report::{Figure, Target};
use crate::stats::median;
use crate::system::{System, SystemOptions};

pub const TARGET_HIT_RATIO: f64 = 1.3;
pub const TARGET_ITSELF_HIT_RATIO: f64 = 1.5;
pub const TARGET_FIRST_RATIO: f64 = 1.1;
pub const TARGET_HIT_ADDED_MS: f64 = 150.0;

pub async fn measure(options: &SystemOptions, ctx: &Context<'_>) -> Result<Vec<Figure>> {
    let scratch = tempfile::Builder::new()
        .prefix("ci-bench-environments-")
        .tempdir()
        .map_err(BenchError::io("creating a scratch folder"))?;
    let with = attrs_hypothesis(scratch.path(), true, Some(ATTRS_HYPOTHESIS))?;
    // The hit's cost alone: a trivial test, with a requirement and without.
    // Not hypothesis: pytest loads its plugin in every run of an environment
    // that has it, which is the project's own cost, not the service's.
    let trivial = attrs_hypothesis(scratch.path(), false, Some("attrs\n"))?;
    let without = attrs_hypothesis(scratch.path(), false, None)?;
    let itself = installs_itself(scratch.path())?;
    let mut controller_env = options.controller_env.clone();
    controller_env.push(("CI_JOB_NETWORK".into(), "bridge".into()));
    let projects = Projects {
        with,
        trivial,
        without,
        itself,
    };
    let options = SystemOptions {
        controller_env,
        ..options.clone()
    };
    System::run(&options, async |system| {
        let deps_image = format!("ci-bench-deps:{}", system.prefix.trim_end_matches('-'));
        let result = measure_on(system, &projects, &deps_image, ctx).await;
        let _ = docker(&["image", "rm", "-f", &deps_image]).await;
        result
    })
    .await
}

/// The figure's projects.
struct Projects {
    /// Tests of attrs with hypothesis, from its requirements.
    with: Project,
    /// A trivial test with a requirement (attrs).
    trivial: Project,
    /// The same trivial test without requirements.
    without: Project,
    /// A src layout that installs itself (`.`), with the same tests.
    itself: Project,
}

async fn measure_on(
    system: &System,
    projects: &Projects,
    deps_image: &str,
    ctx: &Context<'_>,
) -> Result<Vec<Figure>> {
    let Projects {
        with,
        trivial,
        without,
        itself,
    } = projects;
    let key = system.user_with_key("bench-env").await?;
    let mut manual = system.manual_job();
    manual.config.network_mode = "bridge".into();
    let tar = project_tar(&with.zip)?;
    let installing = installing_by_hand(&manual, &system.prefix);

    progress("environments: the by-hand image with the dependencies");
    image_with_dependencies(&manual, &system.prefix, deps_image).await?;
    let from_deps = ManualJob {
        config: ci_controller::ControllerConfig {
            image: deps_image.to_string(),
            ..manual.config.clone()
        },
        ..manual.clone()
    };

    let itself_tar = project_tar(&itself.zip)?;
    let mut itself_alone = from_deps.spec();
    itself_alone
        .env
        .push(format!("PYTHONPATH={WORKSPACE_DIR}/src"));

    // Untimed: the environment built, both pip caches filled, images warm.
    submit(system, &key, &with.dir, false).await?;
    submit(system, &key, &without.dir, false).await?;
    submit(system, &key, &trivial.dir, false).await?;
    by_hand_as(&manual, &installing, &tar).await?;
    by_hand_as(&from_deps, &from_deps.spec(), &tar).await?;
    submit(system, &key, &itself.dir, false).await?;
    by_hand_as(&from_deps, &itself_alone, &itself_tar).await?;

    let pairs = ctx.plan.environment_pairs;
    let mut hit = Vec::new();
    let mut deps = Vec::new();
    let mut none = Vec::new();
    let mut trivial_hit = Vec::new();
    let (mut itself_ratios, mut itself_hit, mut itself_by_hand) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut first = Vec::new();
    let mut install = Vec::new();
    let (mut hit_ratios, mut first_ratios) = (Vec::new(), Vec::new());
    for i in 0..pairs {
        let flip = i % 2 == 1;
        let (h, d) = ordered(
            flip,
            submit(system, &key, &with.dir, false),
            by_hand_as(&from_deps, &from_deps.spec(), &tar),
        )
        .await?;
        let (n, h2) = ordered(
            flip,
            submit(system, &key, &without.dir, false),
            submit(system, &key, &trivial.dir, false),
        )
        .await?;
        let (s, a) = ordered(
            flip,
            submit(system, &key, &itself.dir, false),
            by_hand_as(&from_deps, &itself_alone, &itself_tar),
        )
        .await?;
        itself_ratios.push(ms(s) / ms(a));
        itself_hit.push(ms(s));
        itself_by_hand.push(ms(a));
        let (f, b) = ordered(
            flip,
            submit(system, &key, &with.dir, true),
            by_hand_as(&manual, &installing, &tar),
        )
        .await?;
        progress(format!(
            "environments pair {}/{pairs}: hit {:.0} ms, from a deps image by hand {:.0} ms, \
             trivial test: no requirements {:.0} ms, hit {:.0} ms; \
             first {:.0} ms, install by hand {:.0} ms",
            i + 1,
            ms(h),
            ms(d),
            ms(n),
            ms(h2),
            ms(f),
            ms(b)
        ));
        hit_ratios.push(ms(h) / ms(d));
        first_ratios.push(ms(f) / ms(b));
        hit.push(ms(h));
        trivial_hit.push(ms(h2));
        deps.push(ms(d));
        none.push(ms(n));
        first.push(ms(f));
        install.push(ms(b));
    }
    let med = |v: &[f64]| median(v).unwrap_or(f64::NAN);
    Ok(vec![
        Figure::new(
            "environment_hit_ratio",
            "14a later submit (environment there) / pytest by hand in an image with the deps",
            med(&hit_ratios),
            "x",
        )
        .baseline(med(&deps), "ms")
        .target(Target::AtMost(TARGET_HIT_RATIO))
        .extra("hit_ms", format!("{:.1}", med(&hit)))
        .extra("pairs", pairs),
        Figure::new(
            "environment_itself_hit_ratio",
            "14d later submit of a project that installs itself / pytest by hand in an image with the deps",
            med(&itself_ratios),
            "x",
        )
        .baseline(med(&itself_by_hand), "ms")
        .target(Target::AtMost(TARGET_ITSELF_HIT_RATIO))
        .extra("hit_ms", format!("{:.1}", med(&itself_hit)))
        .extra("pairs", pairs),
        Figure::new(
            "environment_first_ratio",
            "14b first submit (--fresh-env: built) / the same install + pytest by hand",
            med(&first_ratios),
            "x",
        )
        .baseline(med(&install), "ms")
        .target(Target::AtMost(TARGET_FIRST_RATIO))
        .extra("first_ms", format!("{:.1}", med(&first)))
        .extra("pairs", pairs),
        Figure::new(
            "environment_hit_added_ms",
            "14c what a hit adds to ci submit test over the job without requirements",
            med(&trivial_hit) - med(&none),
            "ms",
        )
        .baseline(med(&none), "ms")
        .target(Target::AtMost(TARGET_HIT_ADDED_MS))
        .extra("hit_ms", format!("{:.1}", med(&trivial_hit))),
    ])
}

/// Runs `a` then `b`, or `b` then `a` when `flip`; their times in that order.
async fn ordered(
    flip: bool,
    a: impl std::future::Future<Output = Result<Duration>>,
    b: impl std::future::Future<Output = Result<Duration>>,
) -> Result<(Duration, Duration)> {
    if flip {
        let b = b.await?;
        Ok((a.await?, b))
    } else {
        let a = a.await?;
        Ok((a, b.await?))
    }
}

/// The by-hand job that installs its requirements itself: the controller's
/// container on a writable root, with a pip cache of its own (labelled for
/// the installation, so the clean-up removes it).
fn installing_by_hand(manual: &ManualJob, prefix: &str) -> ContainerSpec {
    let mut spec = manual.spec();
    spec.read_only_rootfs = false;
    spec.tmpfs.clear();
    spec.volumes.retain(|v| v.target != WORKSPACE_DIR);
    spec.volumes.push(VolumeMount {
        name: Some(format!("{prefix}bench-pip-cache")),
        target: format!("{JOB_HOME}/.cache/pip"),
        labels: BTreeMap::from([(LABEL_INSTALLATION.to_string(), prefix.to_string())]),
    });
    spec.cmd[2] = format!(
        "{UNPACK_FROM_STDIN}pip install --no-input --progress-bar off -r requirements.txt 2>&1 || exit $?\n{JOB_SCRIPT}"
    );
    spec
}

/// `image`: the runner image with the figure's requirements installed by
/// hand (`docker run … pip install`, `docker commit`). Not labelled for the
/// installation, whose controller would take the containers made from it for
/// orphans of its own (they inherit the label); [`measure`] removes it.
async fn image_with_dependencies(manual: &ManualJob, prefix: &str, image: &str) -> Result<()> {
    let name = format!("{prefix}bench-deps");
    let mut args = vec![
        "run".to_string(),
        "--name".into(),
        name.clone(),
        "--label".into(),
        format!("{LABEL_BENCH}={prefix}"),
        "--user".into(),
        "1000:1000".into(),
        "--network".into(),
        manual.config.network_mode.clone(),
        manual.config.image.clone(),
        "pip".into(),
        "install".into(),
        "--no-input".into(),
        "--no-cache-dir".into(),
        "--progress-bar".into(),
        "off".into(),
    ];
    args.extend(ATTRS_HYPOTHESIS.lines().map(str::to_string));
    // What the self-installing project's environment holds besides.
    args.extend(["setuptools>=61".to_string(), "wheel".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let installed = docker(&args).await;
    let committed = match installed {
        // An empty Python label: no controller takes it for a runner image.
        Ok(_) => {
            docker(&[
                "commit",
                "--change",
                "LABEL ci.python=\"\" ci.python.version=\"\"",
                &name,
                image,
            ])
            .await
        }
        Err(e) => Err(e),
    };
    let _ = docker(&["rm", "-f", &name]).await;
    committed.map(|_| ())
}

/// Wall time of `ci submit test` in `dir` (with `--fresh-env` when `fresh`),
/// which must pass; returns once the controller has tidied up after it.
async fn submit(system: &System, key: &str, dir: &Path, fresh: bool) -> Result<Duration> {
    let args: &[&str] = if fresh { &["--fresh-env"] } else { &[] };
    let took = ci_submit_with(system, key, dir, args).await?;
    tidied(system).await?;
    Ok(took)
}

/// How long the controller may take to tidy up after a job.
const TIDY_LIMIT: Duration = Duration::from_secs(60);
/// How often the engine is asked whether it has.
const TIDY_POLL: Duration = Duration::from_millis(100);

/// Waits until the system's installation has no container left and no key
/// with more than one build: what the controller does after a job ended
/// (removing its container and a build's preparation container, evicting
/// the build a `--fresh-env` superseded) is done.
async fn tidied(system: &System) -> Result<()> {
    let installation = format!("label={LABEL_INSTALLATION}={}", system.prefix);
    let environments = format!("label={LABEL_ENVIRONMENT_KEY}");
    let template = format!("{{{{index .Config.Labels \"{LABEL_ENVIRONMENT_KEY}\"}}}}");
    let deadline = Instant::now() + TIDY_LIMIT;
    loop {
        let containers = docker(&["ps", "-a", "-q", "--filter", &installation]).await?;
        let images = docker(&[
            "image",
            "ls",
            "-q",
            "--no-trunc",
            "--filter",
            &installation,
            "--filter",
            &environments,
        ])
        .await?;
        let ids: Vec<&str> = images.split_whitespace().collect();
        let mut args = vec!["image", "inspect", "--format", template.as_str()];
        args.extend(&ids);
        // An image evicted since the listing fails the inspection: not
        // tidy yet, asked again.
        let keys = if ids.is_empty() {
            Some(String::new())
        } else {
            docker(&args).await.ok()
        };
        let one_build_per_key = keys.is_some_and(|keys| {
            let mut builds: HashMap<&str, usize> = HashMap::new();
            for key in keys.lines() {
                *builds.entry(key).or_default() += 1;
            }
            builds.values().all(|n| *n == 1)
        });
        if containers.trim().is_empty() && one_build_per_key {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(BenchError::timeout(
                "the controller to remove a job's containers and superseded builds",
                TIDY_LIMIT,
            ));
        }
        tokio::time::sleep(TIDY_POLL).await;
    }
}

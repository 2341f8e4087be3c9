//! A job's dependency environment: which of its requirements can be
//! installed once, ahead of the job, and the key that names the result.
//!
//! Installing the same requirements again is most of a real job's time, so
//! the controller installs them once per key into an environment image that
//! later jobs start from. The key is a digest of the runner image and of every
//! requirements file the job's `requirements.txt` pulls in with `-r`/`-c`, so
//! the same requirements on the same image give the same environment.
//!
//! Entries that name the project itself or other local paths (`.`, `-e .`,
//! `./pkg`) are not part of the environment: the preparation container sees
//! only the requirements files, never the project. They are installed in the
//! job, without dependencies and without build isolation; their build
//! requirements and declared dependencies (read from their `pyproject.toml`)
//! go into the environment instead, so the job builds its project without
//! downloading anything.
//!
//! Requirements that name something private (an index URL with credentials,
//! a local path, `--find-links` to a local folder, an environment variable)
//! make the environment the user's own: its key includes the user, so no other
//! user's job starts from it.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use ci_common::UserId;
use sha2::{Digest, Sha256};

/// The file a job's requirements start from.
pub const REQUIREMENTS_FILE: &str = "requirements.txt";
/// How deep `-r` may nest; pip has no limit, a hostile project must.
const MAX_INCLUDE_DEPTH: usize = 8;

/// What the environment of a job is made of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvironmentPlan {
    /// The lines of the requirements file the preparation container
    /// installs: options and requirement specifiers, `-r` flattened,
    /// `-c` kept as references to the files in [`Self::files`], and the
    /// build requirements and dependencies of the local entries.
    pub requirements: Vec<String>,
    /// The constraint files the preparation container gets, by their path in
    /// the project.
    pub files: BTreeMap<String, String>,
    /// The project's own entries, installed in the job.
    pub local: Vec<LocalEntry>,
    /// The requirements name something private (see the module docs).
    pub private: bool,
}

/// A local path in the requirements, installed in the job from the upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEntry {
    /// The path as pip should see it from the project root (`.`, `./pkg`).
    pub path: String,
    /// The extras asked for (`.[test]`).
    pub extras: Vec<String>,
    /// `-e`: an editable install.
    pub editable: bool,
    /// Its `pyproject.toml` lists its dependencies, which are then in the
    /// environment; otherwise (a `setup.py` that computes them) the job
    /// installs it with its dependencies.
    pub dependencies_known: bool,
}

/// Why a project's requirements cannot be planned. The message is the
/// job's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvironmentError {
    #[error("{file} includes {target:?}, which is outside the project")]
    OutsideProject { file: String, target: String },
    #[error("{file} includes {target:?}, which is not in the project")]
    MissingFile { file: String, target: String },
    #[error(
        "requirements files include each other more than {MAX_INCLUDE_DEPTH} deep (from {file})"
    )]
    TooDeep { file: String },
    #[error("{file}: {option} needs a value")]
    MissingValue { file: String, option: String },
}

impl EnvironmentPlan {
    /// Plans the environment of the project whose files `read` returns (by
    /// their path in the project, `None` when absent), or `None` when the
    /// project has no `requirements.txt`.
    pub fn for_project(
        read: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<EnvironmentPlan>, EnvironmentError> {
        let Some(text) = read(REQUIREMENTS_FILE) else {
            return Ok(None);
        };
        let mut plan = EnvironmentPlan::default();
        plan.add_file(read, REQUIREMENTS_FILE, &text, 0)?;
        let local = plan.local.clone();
        plan.local = local
            .into_iter()
            .map(|entry| plan.add_local_metadata(read, entry))
            .collect();
        Ok(Some(plan))
    }

    /// Nothing to install ahead of the job.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The environment's key: the runner image, what is installed, and for a
    /// private environment its user.
    pub fn key(&self, runner_image_id: &str, user: UserId) -> String {
        let mut digest = Sha256::new();
        let mut field = |bytes: &[u8]| {
            digest.update((bytes.len() as u64).to_le_bytes());
            digest.update(bytes);
        };
        field(b"ci-environment-v1");
        field(runner_image_id.as_bytes());
        for line in &self.requirements {
            field(line.as_bytes());
        }
        for (path, text) in &self.files {
            field(path.as_bytes());
            field(text.as_bytes());
        }
        if self.private {
            field(user.as_uuid().as_bytes());
        }
        hex::encode(digest.finalize())
    }

    fn add_file(
        &mut self,
        read: &dyn Fn(&str) -> Option<String>,
        file: &str,
        text: &str,
        depth: usize,
    ) -> Result<(), EnvironmentError> {
        if depth > MAX_INCLUDE_DEPTH {
            return Err(EnvironmentError::TooDeep {
                file: file.to_string(),
            });
        }
        for line in logical_lines(text) {
            if line.contains("${") {
                // pip expands environment variables: credentials, usually.
                self.private = true;
            }
            match Line::parse(&line) {
                Line::Include { constraint, target } => {
                    let target = target.ok_or_else(|| EnvironmentError::MissingValue {
                        file: file.to_string(),
                        option: if constraint { "-c" } else { "-r" }.to_string(),
                    })?;
                    if is_url(&target) {
                        // Fetched by pip in the preparation container.
                        self.requirements.push(line);
                        continue;
                    }
                    let path = project_path(file, &target).ok_or_else(|| {
                        EnvironmentError::OutsideProject {
                            file: file.to_string(),
                            target: target.clone(),
                        }
                    })?;
                    let included = read(&path).ok_or_else(|| EnvironmentError::MissingFile {
                        file: file.to_string(),
                        target: target.clone(),
                    })?;
                    if constraint {
                        self.requirements.push(format!("-c {path}"));
                        self.files.insert(path, included);
                    } else {
                        self.add_file(read, &path, &included, depth + 1)?;
                    }
                }
                Line::Option { name, value } => {
                    let value_is_private = match name.as_str() {
                        "-i" | "--index-url" | "--extra-index-url" => {
                            value.as_deref().is_some_and(has_credentials)
                        }
                        "-f" | "--find-links" => value.as_deref().is_some_and(|v| {
                            !is_url(v) || has_credentials(v) || v.starts_with("file:")
                        }),
                        _ => false,
                    };
                    self.private |= value_is_private;
                    self.requirements.push(line);
                }
                Line::Local {
                    path,
                    extras,
                    editable,
                } => {
                    self.private = true;
                    self.local.push(LocalEntry {
                        path,
                        extras,
                        editable,
                        dependencies_known: false,
                    });
                }
                Line::Requirement => {
                    self.private |= has_credentials(&line);
                    self.requirements.push(line);
                }
            }
        }
        Ok(())
    }

    /// Adds a local entry's build requirements and declared dependencies to
    /// the environment, from its `pyproject.toml`.
    fn add_local_metadata(
        &mut self,
        read: &dyn Fn(&str) -> Option<String>,
        mut entry: LocalEntry,
    ) -> LocalEntry {
        let folder = entry.path.trim_start_matches("./").trim_end_matches('/');
        let pyproject_path = match folder {
            "" | "." => "pyproject.toml".to_string(),
            folder => format!("{folder}/pyproject.toml"),
        };
        let table = read(&pyproject_path).and_then(|text| text.parse::<toml::Table>().ok());
        // PEP 517: a project without [build-system] builds with setuptools.
        let build_requires = table
            .as_ref()
            .and_then(|t| t.get("build-system")?.get("requires")?.as_array().cloned())
            .map(|list| strings(&list))
            .unwrap_or_else(|| vec!["setuptools>=40.8.0".to_string(), "wheel".to_string()]);
        // setuptools before 70.1 builds wheels only with `wheel` installed,
        // which build isolation adds on its own (the backend asks for it);
        // the job builds without isolation, so the environment has it.
        let uses_setuptools = build_requires
            .iter()
            .any(|r| requirement_name(r) == "setuptools");
        let has_wheel = build_requires
            .iter()
            .any(|r| requirement_name(r) == "wheel");
        self.requirements.extend(build_requires);
        if uses_setuptools && !has_wheel {
            self.requirements.push("wheel".to_string());
        }
        let project = table.as_ref().and_then(|t| t.get("project"));
        let dynamic = project
            .and_then(|p| p.get("dynamic")?.as_array().cloned())
            .map(|list| strings(&list))
            .unwrap_or_default();
        if let Some(project) = project.filter(|_| !dynamic.iter().any(|d| d == "dependencies")) {
            let mut dependencies = project
                .get("dependencies")
                .and_then(|d| d.as_array())
                .map(|list| strings(list))
                .unwrap_or_default();
            for extra in &entry.extras {
                if let Some(list) = project
                    .get("optional-dependencies")
                    .and_then(|o| o.get(extra))
                    .and_then(|l| l.as_array())
                {
                    dependencies.extend(strings(list));
                }
            }
            self.requirements.extend(dependencies);
            entry.dependencies_known = true;
        }
        entry
    }
}

/// The project a requirement names, normalised (PEP 503): `Setuptools>=61`
/// → `setuptools`.
fn requirement_name(requirement: &str) -> String {
    requirement
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
        .replace(['_', '.'], "-")
}

fn strings(list: &[toml::Value]) -> Vec<String> {
    list.iter()
        .filter_map(|v| v.as_str())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// One logical line of a requirements file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    Include {
        constraint: bool,
        target: Option<String>,
    },
    Option {
        name: String,
        value: Option<String>,
    },
    Local {
        path: String,
        extras: Vec<String>,
        editable: bool,
    },
    Requirement,
}

impl Line {
    fn parse(line: &str) -> Line {
        let (name, value) = split_option(line);
        match name {
            Some("-r" | "--requirement") => Line::Include {
                constraint: false,
                target: value,
            },
            Some("-c" | "--constraint") => Line::Include {
                constraint: true,
                target: value,
            },
            Some("-e" | "--editable") => match value.as_deref().and_then(local_target) {
                Some((path, extras)) => Line::Local {
                    path,
                    extras,
                    editable: true,
                },
                None => Line::Option {
                    name: "-e".to_string(),
                    value,
                },
            },
            Some(name) => Line::Option {
                name: name.to_string(),
                value,
            },
            None => match local_target(line) {
                Some((path, extras)) => Line::Local {
                    path,
                    extras,
                    editable: false,
                },
                None => Line::Requirement,
            },
        }
    }
}

/// An option line's name and value: `-r x`, `-rx`, `--requirement=x`,
/// `--requirement x`; `(None, None)` for a line that is no option.
fn split_option(line: &str) -> (Option<&str>, Option<String>) {
    if !line.starts_with('-') {
        return (None, None);
    }
    let value = |rest: &str| Some(rest.trim().to_string()).filter(|v| !v.is_empty());
    if let Some(long) = line.strip_prefix("--") {
        let end = long
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(long.len());
        let rest = long[end..].trim_start_matches('=');
        return (Some(&line[..end + 2]), value(rest));
    }
    // Short options take their value glued or after a space.
    let split = line.char_indices().nth(2).map_or(line.len(), |(i, _)| i);
    (Some(&line[..split]), value(&line[split..]))
}

/// A requirement that names a local path: `.`, `./pkg[extra]`, `/abs`,
/// `file:…`, `name @ file:…`; the path and the extras.
fn local_target(spec: &str) -> Option<(String, Vec<String>)> {
    let spec = spec.trim();
    let target = match spec.split_once(" @ ") {
        Some((_, url)) => url.trim(),
        None => spec,
    };
    // Markers (`; python_version < "3.12"`) do not change what is named.
    let target = target.split(';').next().unwrap_or(target).trim();
    let local = target.starts_with('.')
        || target.starts_with('/')
        || target.starts_with("file:")
        || (target.contains('/') && !target.contains("://"));
    if !local {
        return None;
    }
    let (path, extras) = match target.split_once('[') {
        Some((path, rest)) => (
            path,
            rest.trim_end_matches(']')
                .split(',')
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect(),
        ),
        None => (target, Vec::new()),
    };
    Some((path.to_string(), extras))
}

fn is_url(value: &str) -> bool {
    value.contains("://")
}

/// `https://user:secret@host/…` or `https://token@host/…`.
fn has_credentials(value: &str) -> bool {
    value.split("://").skip(1).any(|rest| {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
        authority.contains('@')
    })
}

/// The path of `target`, named in `file`, relative to the project root; `None`
/// when it leaves the project.
fn project_path(file: &str, target: &str) -> Option<String> {
    let target = target.strip_prefix("file:").unwrap_or(target);
    if Path::new(target).is_absolute() {
        return None;
    }
    let base = Path::new(file).parent().unwrap_or(Path::new(""));
    let mut out = PathBuf::new();
    for component in base.join(target).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    out.to_str().map(|p| p.replace('\\', "/"))
}

/// A requirements file's lines as pip reads them: comments dropped (a `#`
/// at the start or after white space), `\` continuations joined, blank lines
/// skipped.
fn logical_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for raw in text.lines() {
        let without_comment = match raw.find('#') {
            Some(0) => "",
            Some(i) if raw[..i].ends_with(char::is_whitespace) => &raw[..i],
            _ => raw,
        };
        if let Some(continued) = without_comment.strip_suffix('\\') {
            current.push_str(continued);
            continue;
        }
        current.push_str(without_comment);
        let line = current.trim().to_string();
        current.clear();
        if !line.is_empty() {
            lines.push(line);
        }
    }
    let last = current.trim();
    if !last.is_empty() {
        lines.push(last.to_string());
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(files: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let files: BTreeMap<String, String> = files
            .iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect();
        move |path: &str| files.get(path).cloned()
    }

    fn plan(files: &[(&str, &str)]) -> EnvironmentPlan {
        EnvironmentPlan::for_project(&project(files))
            .expect("plannable")
            .expect("has requirements")
    }

    #[test]
    fn a_setuptools_project_gets_wheel_to_build_without_isolation() {
        let p = plan(&[
            ("requirements.txt", ".\n"),
            (
                "pyproject.toml",
                "[build-system]\nrequires = ['Setuptools>=61']\n[project]\nname = 'app'\n",
            ),
        ]);
        assert_eq!(p.requirements, ["Setuptools>=61", "wheel"]);
        let p = plan(&[
            ("requirements.txt", ".\n"),
            (
                "pyproject.toml",
                "[build-system]\nrequires = ['setuptools', 'wheel>=0.40']\n",
            ),
        ]);
        assert_eq!(p.requirements, ["setuptools", "wheel>=0.40"]);
    }

    #[test]
    fn a_project_without_requirements_has_no_environment() {
        assert_eq!(EnvironmentPlan::for_project(&project(&[])), Ok(None));
    }

    #[test]
    fn requirements_are_flattened_and_constraints_kept_as_files() {
        let p = plan(&[
            (
                "requirements.txt",
                "# the app\nattrs==23.2.0  # pinned\n-r requirements/test.txt\n-c constraints.txt\n",
            ),
            ("requirements/test.txt", "hypothesis\\\n>=6\n--requirement=../more.txt\n"),
            ("more.txt", "pytest\n"),
            ("constraints.txt", "hypothesis<7\n"),
        ]);
        assert_eq!(
            p.requirements,
            vec![
                "attrs==23.2.0",
                "hypothesis>=6",
                "pytest",
                "-c constraints.txt"
            ]
        );
        assert_eq!(
            p.files,
            BTreeMap::from([("constraints.txt".to_string(), "hypothesis<7\n".to_string())])
        );
        assert!(!p.private);
        assert!(p.local.is_empty());
    }

    #[test]
    fn local_entries_go_to_the_job_and_their_metadata_to_the_environment() {
        let p = plan(&[
            ("requirements.txt", "-e .[test]\n./plugins/extra\nrequests\n"),
            (
                "pyproject.toml",
                "[build-system]\nrequires = ['hatchling']\n[project]\nname = 'app'\n\
                 dependencies = ['attrs>=23']\n[project.optional-dependencies]\ntest = ['hypothesis']\n",
            ),
            (
                "plugins/extra/pyproject.toml",
                "[project]\nname = 'extra'\ndynamic = ['dependencies']\n",
            ),
        ]);
        assert_eq!(
            p.requirements,
            vec![
                "requests",
                "hatchling",
                "attrs>=23",
                "hypothesis",
                // No [build-system]: setuptools, by PEP 517.
                "setuptools>=40.8.0",
                "wheel",
            ]
        );
        assert_eq!(
            p.local,
            vec![
                LocalEntry {
                    path: ".".into(),
                    extras: vec!["test".into()],
                    editable: true,
                    dependencies_known: true
                },
                LocalEntry {
                    path: "./plugins/extra".into(),
                    extras: vec![],
                    editable: false,
                    dependencies_known: false
                },
            ]
        );
        // A local path is private to its user.
        assert!(p.private);
    }

    /// One row per rule: a requirements line, and whether it is private.
    #[test]
    fn what_makes_an_environment_private() {
        let rows = [
            ("attrs", false),
            ("--index-url https://pypi.org/simple", false),
            ("-i https://user:secret@pypi.internal/simple", true),
            ("--extra-index-url=https://token@pypi.internal/simple", true),
            ("--find-links https://example.org/wheels", false),
            ("--find-links ./wheels", true),
            ("-f file:///srv/wheels", true),
            ("pkg @ https://user:pw@git.internal/pkg.zip", true),
            ("pkg @ https://example.org/pkg.zip", false),
            (
                "--index-url https://${PYPI_TOKEN}@pypi.internal/simple",
                true,
            ),
            ("-e git+https://github.com/org/repo#egg=repo", false),
        ];
        for (line, private) in rows {
            let p = plan(&[("requirements.txt", line)]);
            assert_eq!(p.private, private, "{line}");
        }
    }

    #[test]
    fn the_key_follows_image_content_and_for_private_environments_the_user() {
        let (a, b) = (UserId::random(), UserId::random());
        let public = plan(&[("requirements.txt", "attrs\n")]);
        assert_eq!(public.key("img1", a), public.key("img1", b));
        assert_ne!(public.key("img1", a), public.key("img2", a));
        let other = plan(&[("requirements.txt", "attrs\nhypothesis\n")]);
        assert_ne!(public.key("img1", a), other.key("img1", a));
        // Comments and blank lines are no part of what is installed.
        let commented = plan(&[("requirements.txt", "# deps\n\nattrs   # latest\n")]);
        assert_eq!(public.key("img1", a), commented.key("img1", a));
        let private = plan(&[("requirements.txt", "-e .\n"), ("pyproject.toml", "")]);
        assert_ne!(private.key("img1", a), private.key("img1", b));
        // A constraint file's content is part of the key.
        let c1 = plan(&[("requirements.txt", "-c c.txt\n"), ("c.txt", "attrs<23\n")]);
        let c2 = plan(&[("requirements.txt", "-c c.txt\n"), ("c.txt", "attrs<24\n")]);
        assert_ne!(c1.key("img1", a), c2.key("img1", a));
    }

    #[test]
    fn includes_must_stay_in_the_project_and_exist() {
        let err = |files: &[(&str, &str)]| EnvironmentPlan::for_project(&project(files)).err();
        assert!(matches!(
            err(&[("requirements.txt", "-r ../../etc/passwd\n")]),
            Some(EnvironmentError::OutsideProject { .. })
        ));
        assert!(matches!(
            err(&[("requirements.txt", "-r /etc/passwd\n")]),
            Some(EnvironmentError::OutsideProject { .. })
        ));
        assert!(matches!(
            err(&[("requirements.txt", "-r missing.txt\n")]),
            Some(EnvironmentError::MissingFile { .. })
        ));
        assert!(matches!(
            err(&[("requirements.txt", "-r\n")]),
            Some(EnvironmentError::MissingValue { .. })
        ));
        // A file that includes itself ends, with a reason.
        assert!(matches!(
            err(&[("requirements.txt", "-r requirements.txt\n")]),
            Some(EnvironmentError::TooDeep { .. })
        ));
    }

    #[test]
    fn only_an_empty_plan_installs_nothing() {
        assert!(plan(&[("requirements.txt", "# nothing\n")]).is_empty());
        assert!(!plan(&[("requirements.txt", "attrs\n")]).is_empty());
    }
}

//! The Pythons this installation offers, and which one a job gets.
//!
//! Runner images say which Python they carry by label (`scripts/runner-image.sh`
//! sets them), so the offer is whatever the engine has, found anew on every
//! resync: an image built later is picked up without a restart, and nothing
//! here is a hard-coded list.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use ci_common::PythonVersion;
use pep440_rs::{Version, VersionSpecifiers};

use crate::runtime::ImageInfo;

/// Label with the `major.minor` Python of a runner image.
pub const LABEL_PYTHON: &str = "ci.python";
/// Label with the image's full Python version (`3.13.5`), when known; it
/// decides specifiers such as `>=3.11.4` exactly.
pub const LABEL_PYTHON_VERSION: &str = "ci.python.version";

/// A runner image on offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerImage {
    /// What the engine knows the image by (its id, or a tag).
    pub image: String,
    pub python: PythonVersion,
    /// The full version, `3.13.5`, or `3.13.0` when the image does not say.
    pub version: Version,
}

/// The runner images on the engine, one per Python.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PythonCatalog {
    images: BTreeMap<PythonVersion, RunnerImage>,
}

/// What a job asks for: a Python by flag, else the project's
/// `requires-python`, else the installation's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PythonWish {
    /// `ci submit test --python X.Y`.
    pub requested: Option<PythonVersion>,
    /// The project's `requires-python` (PEP 440 specifiers), as written.
    pub requires_python: Option<String>,
}

/// Which image a job runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PythonChoice {
    /// A runner image of the catalog.
    Image(RunnerImage),
    /// The installation's base image (`CI_PYTHON_BASE_IMAGE`): nothing was
    /// asked for and the default Python has no image of its own, or the
    /// engine has no labelled images at all (a custom base image).
    BaseImage,
}

/// Why no Python fits a job. The message is the job's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoPython {
    #[error("Python {requested} is not offered by this installation; it offers: {offered}")]
    NotOffered {
        requested: PythonVersion,
        offered: Offered,
    },
    #[error("no Python offered by this installation satisfies the project's requires-python {spec:?}; it offers: {offered}")]
    Unsatisfiable { spec: String, offered: Offered },
    #[error("the project's requires-python {spec:?} is not a valid version specifier: {error}")]
    InvalidSpecifier { spec: String, error: String },
}

/// The Pythons on offer, for messages: `3.11, 3.13`, or `none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offered(pub Vec<PythonVersion>);

impl fmt::Display for Offered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none (build one with scripts/runner-image.sh --python X.Y)");
        }
        let list: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&list.join(", "))
    }
}

impl PythonCatalog {
    /// The catalog of the images the engine listed, each as its id or tag and
    /// its labels, oldest build first. Images without a valid Python label
    /// are not runner images. Where two images carry one Python, the newer
    /// patch release wins, and between equal releases the later build (a
    /// rebuilt recipe replaces the image it was built from).
    pub fn from_labelled<I>(images: I) -> Self
    where
        I: IntoIterator<Item = (String, HashMap<String, String>)>,
    {
        let mut catalog = PythonCatalog::default();
        for (image, labels) in images {
            let Some(python) = labels
                .get(LABEL_PYTHON)
                .and_then(|raw| raw.parse::<PythonVersion>().ok())
            else {
                continue;
            };
            let version = labels
                .get(LABEL_PYTHON_VERSION)
                .and_then(|raw| Version::from_str(raw).ok())
                .filter(|v| {
                    v.release()
                        .starts_with(&[python.major.into(), python.minor.into()])
                })
                .unwrap_or_else(|| {
                    Version::new([u64::from(python.major), u64::from(python.minor), 0])
                });
            let candidate = RunnerImage {
                image,
                python,
                version,
            };
            match catalog.images.get(&python) {
                Some(kept) if kept.version > candidate.version => {}
                _ => {
                    catalog.images.insert(python, candidate);
                }
            }
        }
        catalog
    }

    /// The Pythons on offer, oldest first.
    pub fn offered(&self) -> Offered {
        Offered(self.images.keys().copied().collect())
    }

    pub fn get(&self, python: PythonVersion) -> Option<&RunnerImage> {
        self.images.get(&python)
    }

    /// The image for `wish`: the requested Python exactly; else the newest
    /// Python that satisfies `requires-python`; else `default` when it is on
    /// offer, else the base image. An engine without labelled images runs
    /// everything unasked-for on the base image, since nothing can be judged.
    pub fn choose(
        &self,
        wish: &PythonWish,
        default: Option<PythonVersion>,
    ) -> Result<PythonChoice, NoPython> {
        if let Some(requested) = wish.requested {
            return self
                .get(requested)
                .cloned()
                .map(PythonChoice::Image)
                .ok_or_else(|| NoPython::NotOffered {
                    requested,
                    offered: self.offered(),
                });
        }
        if let Some(spec) = wish
            .requires_python
            .as_deref()
            .filter(|_| !self.images.is_empty())
        {
            let specifiers =
                VersionSpecifiers::from_str(spec).map_err(|e| NoPython::InvalidSpecifier {
                    spec: spec.to_string(),
                    error: e.to_string(),
                })?;
            return self
                .images
                .values()
                .rev()
                .find(|image| specifiers.contains(&image.version))
                .cloned()
                .map(PythonChoice::Image)
                .ok_or_else(|| NoPython::Unsatisfiable {
                    spec: spec.to_string(),
                    offered: self.offered(),
                });
        }
        Ok(default
            .and_then(|python| self.get(python).cloned())
            .map_or(PythonChoice::BaseImage, PythonChoice::Image))
    }
}

/// What the installation offers at one moment: the catalog, the base image
/// (`CI_PYTHON_BASE_IMAGE`) and the default Python.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonOffer {
    catalog: PythonCatalog,
    base_image: String,
    /// The base image's own Python, when it is a labelled runner image.
    base_python: Option<PythonVersion>,
    default: Option<PythonVersion>,
}

impl PythonOffer {
    /// The offer of the images the engine lists. The default Python is the
    /// configured one (`CI_PYTHON_DEFAULT`), else the base image's.
    pub fn new(
        images: &[ImageInfo],
        base_image: &str,
        configured_default: Option<PythonVersion>,
    ) -> Self {
        let mut by_age: Vec<&ImageInfo> = images.iter().collect();
        by_age.sort_by_key(|i| i.created);
        let catalog = PythonCatalog::from_labelled(
            by_age
                .iter()
                .map(|i| (i.reference().to_string(), i.labels.clone())),
        );
        let base_python = images
            .iter()
            .find(|i| i.id == base_image || i.tags.iter().any(|t| t == base_image))
            .and_then(|i| i.labels.get(LABEL_PYTHON))
            .and_then(|raw| raw.parse().ok());
        PythonOffer {
            catalog,
            base_image: base_image.to_string(),
            base_python,
            default: configured_default.or(base_python),
        }
    }

    /// The image a job runs in and its Python (unknown for an unlabelled
    /// base image).
    pub fn resolve(&self, wish: &PythonWish) -> Result<(String, Option<PythonVersion>), NoPython> {
        Ok(match self.catalog.choose(wish, self.default)? {
            PythonChoice::Image(image) => (image.image, Some(image.python)),
            PythonChoice::BaseImage => (self.base_image.clone(), self.base_python),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(raw: &str) -> PythonVersion {
        raw.parse().expect("a Python version")
    }

    fn labelled(
        image: &str,
        python: &str,
        version: Option<&str>,
    ) -> (String, HashMap<String, String>) {
        let mut labels = HashMap::from([(LABEL_PYTHON.to_string(), python.to_string())]);
        if let Some(version) = version {
            labels.insert(LABEL_PYTHON_VERSION.to_string(), version.to_string());
        }
        (image.to_string(), labels)
    }

    fn catalog() -> PythonCatalog {
        PythonCatalog::from_labelled([
            labelled("runner:3.11", "3.11", Some("3.11.2")),
            labelled("runner:3.13", "3.13", Some("3.13.5")),
            labelled("runner:3.14", "3.14", None),
            ("unrelated:latest".to_string(), HashMap::new()),
            labelled("broken", "three", None),
        ])
    }

    fn chosen(result: Result<PythonChoice, NoPython>) -> String {
        match result {
            Ok(PythonChoice::Image(image)) => image.image,
            Ok(PythonChoice::BaseImage) => "base".to_string(),
            Err(e) => format!("error: {e}"),
        }
    }

    /// One row of the choice table: (requested, requires-python, default) →
    /// the image chosen, or the start of the error.
    type Row = (
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        &'static str,
    );

    #[test]
    fn the_choice_table() {
        let rows: &[Row] = &[
            // A flag wins over everything and must be on offer exactly.
            (Some("3.13"), Some(">=3.14"), Some("3.11"), "runner:3.13"),
            (Some("3.12"), None, None, "error: Python 3.12 is not offered by this installation; it offers: 3.11, 3.13, 3.14"),
            // requires-python: the newest that satisfies it.
            (None, Some(">=3.9"), Some("3.11"), "runner:3.14"),
            (None, Some(">=3.11,<3.14"), None, "runner:3.13"),
            (None, Some("~=3.11.0"), None, "runner:3.11"),
            (None, Some("==3.13.*"), None, "runner:3.13"),
            // The full version decides patch-level specifiers.
            (None, Some(">=3.11.4,<3.12"), None, "error: no Python offered by this installation satisfies the project's requires-python \">=3.11.4,<3.12\"; it offers: 3.11, 3.13, 3.14"),
            (None, Some("not a spec"), None, "error: the project's requires-python \"not a spec\" is not a valid version specifier"),
            // Nothing asked: the default when it is on offer, else the base image.
            (None, None, Some("3.11"), "runner:3.11"),
            (None, None, Some("3.12"), "base"),
            (None, None, None, "base"),
        ];
        let catalog = catalog();
        for &(requested, spec, default, expected) in rows {
            let wish = PythonWish {
                requested: requested.map(v),
                requires_python: spec.map(str::to_string),
            };
            let got = chosen(catalog.choose(&wish, default.map(v)));
            assert!(
                got.starts_with(expected),
                "{requested:?} {spec:?} {default:?}: {got} (expected {expected})"
            );
        }
    }

    #[test]
    fn without_labelled_images_everything_unasked_runs_on_the_base_image() {
        let empty = PythonCatalog::from_labelled(Vec::new());
        let wish = PythonWish {
            requested: None,
            requires_python: Some(">=3.12".into()),
        };
        assert_eq!(empty.choose(&wish, None), Ok(PythonChoice::BaseImage));
        let asked = PythonWish {
            requested: Some(v("3.13")),
            requires_python: None,
        };
        assert!(chosen(empty.choose(&asked, None)).contains("it offers: none (build one"));
    }

    #[test]
    fn of_two_images_of_one_python_the_newer_release_wins_whatever_the_order() {
        let a = labelled("old", "3.13", Some("3.13.1"));
        let b = labelled("new", "3.13", Some("3.13.5"));
        for images in [vec![a.clone(), b.clone()], vec![b, a]] {
            let catalog = PythonCatalog::from_labelled(images);
            assert_eq!(
                catalog.get(v("3.13")).map(|i| i.image.as_str()),
                Some("new")
            );
        }
    }

    #[test]
    fn a_full_version_that_contradicts_the_series_is_ignored() {
        let catalog = PythonCatalog::from_labelled([labelled("odd", "3.13", Some("3.11.9"))]);
        assert_eq!(
            catalog.get(v("3.13")).map(|i| i.version.to_string()),
            Some("3.13.0".to_string())
        );
    }

    fn image(id: &str, tag: &str, python: &str) -> ImageInfo {
        ImageInfo {
            id: id.into(),
            tags: vec![tag.into()],
            labels: HashMap::from([(LABEL_PYTHON.to_string(), python.to_string())]),
            created: 0,
            size: 0,
        }
    }

    #[test]
    fn of_two_builds_of_one_release_the_newer_build_wins() {
        let build = |id: &str, created: i64| ImageInfo {
            created,
            ..image(id, &format!("runner:3.11-{id}"), "3.11")
        };
        for images in [
            vec![build("old", 100), build("new", 200)],
            vec![build("new", 200), build("old", 100)],
        ] {
            let offer = PythonOffer::new(&images, "runner:3.11", None);
            let wish = PythonWish {
                requested: Some(v("3.11")),
                requires_python: None,
            };
            assert_eq!(
                offer.resolve(&wish).map(|(i, _)| i),
                Ok("runner:3.11-new".into())
            );
        }
    }

    #[test]
    fn the_default_is_configured_else_the_base_images_python() {
        let images = [
            image("sha256:a", "runner:3.11", "3.11"),
            image("sha256:b", "runner:3.13", "3.13"),
        ];
        let nothing = PythonWish::default();
        let offer = PythonOffer::new(&images, "runner:3.11", None);
        assert_eq!(
            offer.resolve(&nothing),
            Ok(("runner:3.11".into(), Some(v("3.11"))))
        );
        let offer = PythonOffer::new(&images, "runner:3.11", Some(v("3.13")));
        assert_eq!(
            offer.resolve(&nothing),
            Ok(("runner:3.13".into(), Some(v("3.13"))))
        );
        // A custom, unlabelled base image runs what asks for nothing.
        let offer = PythonOffer::new(&images, "custom:1", None);
        assert_eq!(offer.resolve(&nothing), Ok(("custom:1".into(), None)));
        let asked = PythonWish {
            requested: Some(v("3.13")),
            requires_python: None,
        };
        assert_eq!(
            offer.resolve(&asked),
            Ok(("runner:3.13".into(), Some(v("3.13"))))
        );
    }
}

//! The Python projects the benchmark submits, generated into a scratch folder
//! so the suite depends on nothing but itself, and their zips for the API.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{BenchError, Result};

/// The first characters of every line the big-output fixture prints, so that the
/// lines can be picked out of pytest's own output and compared.
pub const BIG_LINE_PREFIX: &str = "bench-line ";

/// What every line of the live fixture starts with, before its number and the
/// container's clock reading when it was printed.
pub const LIVE_LINE_PREFIX: &str = "live-line ";

/// The term on every 50th line of the page fixture.
pub const PAGE_NEEDLE: &str = "needle-mark";

/// One generated project: a folder and the zip `ci` would upload for it.
#[derive(Debug, Clone)]
pub struct Project {
    pub dir: PathBuf,
    pub zip: Vec<u8>,
}

/// Five quick passing tests: the typical small job.
pub fn passing(root: &Path) -> Result<Project> {
    write_project(
        &root.join("passing"),
        &[(
            "test_sample.py",
            "import math\n\n\n\
             def test_addition():\n    assert 1 + 1 == 2\n\n\n\
             def test_strings():\n    assert \"ci\".upper() == \"CI\"\n\n\n\
             def test_lists():\n    assert sorted([3, 1, 2]) == [1, 2, 3]\n\n\n\
             def test_math():\n    assert math.isclose(math.sqrt(2) ** 2, 2.0)\n\n\n\
             def test_dicts():\n    assert {\"a\": 1}.get(\"a\") == 1\n"
                .to_string(),
        )],
    )
}

/// The requirements of the environments figure: real dependencies from PyPI.
pub const ATTRS_HYPOTHESIS: &str = "attrs\nhypothesis\n";

/// The environments figure's project: tests of `attrs` with `hypothesis`
/// (`uses_them`) or a trivial test, with `requirements` (a
/// `requirements.txt`) or none.
pub fn attrs_hypothesis(
    root: &Path,
    uses_them: bool,
    requirements: Option<&str>,
) -> Result<Project> {
    let test = if uses_them {
        "import attrs\nfrom hypothesis import given, strategies as st\n\n\n\
         @attrs.define\nclass Point:\n    x: int\n    y: int\n\n\n\
         @given(st.integers(), st.integers())\n\
         def test_points_compare_by_value(x, y):\n    assert Point(x, y) == Point(x, y)\n"
    } else {
        "def test_points_compare_by_value():\n    assert (1, 2) == (1, 2)\n"
    };
    let mut files = vec![("test_props.py", test.to_string())];
    if let Some(requirements) = requirements {
        files.push(("requirements.txt", requirements.to_string()));
    }
    let name = format!(
        "attrs-hypothesis-{uses_them}-{}",
        requirements.map_or(0, str::len)
    );
    write_project(&root.join(name), &files)
}

/// The environments figure's project that installs itself: a src layout
/// built with setuptools, `.` in its requirements, its dependencies (`attrs`,
/// `hypothesis`) in its `pyproject.toml`.
pub fn installs_itself(root: &Path) -> Result<Project> {
    write_project(
        &root.join("installs-itself"),
        &[
            ("requirements.txt", ".\n".to_string()),
            (
                "pyproject.toml",
                "[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n\n\
                 [project]\nname = \"benchpoints\"\nversion = \"0.1.0\"\ndependencies = [\"attrs\", \"hypothesis\"]\n"
                    .to_string(),
            ),
            (
                "src/benchpoints/__init__.py",
                "import attrs\n\n\n@attrs.define\nclass Point:\n    x: int\n    y: int\n".to_string(),
            ),
            (
                "tests/test_points.py",
                "from hypothesis import given, strategies as st\n\nfrom benchpoints import Point\n\n\n\
                 @given(st.integers(), st.integers())\n\
                 def test_points_compare_by_value(x, y):\n    assert Point(x, y) == Point(x, y)\n"
                    .to_string(),
            ),
        ],
    )
}

/// One passing test that prints `lines` numbered lines past pytest's capture.
pub fn big_output(root: &Path, lines: usize) -> Result<Project> {
    let test = format!(
        "def test_big_output(capsys):\n\
         \x20   # Past pytest's capture, so the lines are the job's own output.\n\
         \x20   with capsys.disabled():\n\
         \x20       print()\n\
         \x20       for i in range({lines}):\n\
         \x20           print(f\"{BIG_LINE_PREFIX}{{i:06d}} the quick brown fox jumps over the lazy dog {{i * 7919 % 100003:06d}}\")\n"
    );
    write_project(
        &root.join(format!("big-output-{lines}")),
        &[("test_big_output.py", test)],
    )
}

/// One passing test printing `lines` lines for the page's figure; every 50th
/// is coloured and holds [`PAGE_NEEDLE`], so a search finds `lines / 50`.
pub fn page_log(root: &Path, lines: usize) -> Result<Project> {
    let test = format!(
        "def test_page_log(capsys):\n\
         \x20   with capsys.disabled():\n\
         \x20       print()\n\
         \x20       for i in range({lines}):\n\
         \x20           if i % 50 == 0:\n\
         \x20               print(f\"\\x1b[33mpage-line {{i:06d}} {PAGE_NEEDLE} the quick brown fox\\x1b[0m\")\n\
         \x20           else:\n\
         \x20               print(f\"page-line {{i:06d}} the quick brown fox jumps over the lazy dog\")\n"
    );
    write_project(
        &root.join(format!("page-log-{lines}")),
        &[("test_page_log.py", test)],
    )
}

/// One passing test printing `total` lines at `rate` lines a second, each
/// with the container's clock when it was printed.
pub fn live_log(root: &Path, rate: usize, total: usize) -> Result<Project> {
    let test = format!(
        "import time\n\n\n\
         def test_live(capsys):\n\
         \x20   with capsys.disabled():\n\
         \x20       print(flush=True)\n\
         \x20       start = time.time()\n\
         \x20       for i in range({total}):\n\
         \x20           delay = start + i / {rate} - time.time()\n\
         \x20           if delay > 0:\n\
         \x20               time.sleep(delay)\n\
         \x20           print(f\"{LIVE_LINE_PREFIX}{{i:06d}} {{time.time():.6f}}\", flush=True)\n"
    );
    write_project(
        &root.join(format!("live-log-{rate}-{total}")),
        &[("test_live.py", test)],
    )
}

/// A job that prints one line at once, then runs for `seconds` and passes.
pub fn sleeper(root: &Path, seconds: u64) -> Result<Project> {
    let test = format!(
        "import time\n\n\n\
         def test_sleeps(capsys):\n\
         \x20   with capsys.disabled():\n\
         \x20       print(\"\\nsleeper started\", flush=True)\n\
         \x20   time.sleep({seconds})\n"
    );
    write_project(
        &root.join(format!("sleeper-{seconds}")),
        &[("test_sleeper.py", test)],
    )
}

/// A job that prints a numbered line every `every_ms` milliseconds for
/// `seconds`, each flushed at once: steady output for the streams to follow.
pub fn printer(root: &Path, seconds: u64, every_ms: u64) -> Result<Project> {
    let test = format!(
        "import time\n\n\n\
         def test_prints(capsys):\n\
         \x20   with capsys.disabled():\n\
         \x20       print()\n\
         \x20       for i in range({count}):\n\
         \x20           print(f\"tick {{i:08d}}\", flush=True)\n\
         \x20           time.sleep({every})\n",
        count = seconds * 1000 / every_ms.max(1),
        every = every_ms as f64 / 1000.0,
    );
    write_project(
        &root.join(format!("printer-{seconds}-{every_ms}")),
        &[("test_printer.py", test)],
    )
}

/// `tests` generated tests, `failing` of which fail with a message: the
/// test-results figure's project, whose report has `tests` cases.
pub fn many_tests(root: &Path, tests: usize, failing: usize) -> Result<Project> {
    let test = format!(
        "import pytest\n\n\n\
         @pytest.mark.parametrize(\"i\", range({tests}))\n\
         def test_generated(i):\n\
         \x20   assert i >= {failing}, f\"case {{i}} fails on purpose\"\n"
    );
    write_project(
        &root.join(format!("many-tests-{tests}")),
        &[("test_generated.py", test)],
    )
}

/// One passing test, after which the job replaces its report with one of
/// `cases` cases (written by a conftest hook that runs after pytest's own
/// report): the controller's memory figure while storing a big report.
pub fn huge_report(root: &Path, cases: usize) -> Result<Project> {
    let conftest = format!(
        "def pytest_unconfigure(config):\n\
         \x20   with open('/ci-report/junit.xml', 'w') as f:\n\
         \x20       f.write('<testsuites><testsuite name=\"pytest\">')\n\
         \x20       for i in range({cases}):\n\
         \x20           f.write(f'<testcase classname=\"tests.test_huge\" name=\"test_{{i}}\" file=\"tests/test_huge.py\" time=\"0.001\"/>')\n\
         \x20       f.write('</testsuite></testsuites>')\n"
    );
    write_project(
        &root.join(format!("huge-report-{cases}")),
        &[
            ("conftest.py", conftest),
            ("test_one.py", "def test_one():\n    pass\n".to_string()),
        ],
    )
}

fn write_project(dir: &Path, files: &[(&str, String)]) -> Result<Project> {
    std::fs::create_dir_all(dir).map_err(BenchError::io(format!("creating {}", dir.display())))?;
    for (name, text) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(BenchError::io(format!("creating {}", parent.display())))?;
        }
        std::fs::write(&path, text)
            .map_err(BenchError::io(format!("writing {}", path.display())))?;
    }
    let zip = zip_files(files)?;
    Ok(Project {
        dir: dir.to_path_buf(),
        zip,
    })
}

/// The project as the upload zip (deflated, as `ci` makes it).
fn zip_files(files: &[(&str, String)]) -> Result<Vec<u8>> {
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o644);
    let zip_error = |e: zip::result::ZipError| BenchError::Setup(format!("building a zip: {e}"));
    for (name, text) in files {
        out.start_file(*name, options).map_err(zip_error)?;
        out.write_all(text.as_bytes())
            .map_err(BenchError::io("writing a zip entry"))?;
    }
    Ok(out.finish().map_err(zip_error)?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects_are_written_and_zipped() {
        let dir = tempfile::tempdir().unwrap();
        let p = big_output(dir.path(), 3).unwrap();
        let text = std::fs::read_to_string(p.dir.join("test_big_output.py")).unwrap();
        assert!(text.contains("range(3)"));
        assert!(text.contains(BIG_LINE_PREFIX));
        let archive = zip::ZipArchive::new(std::io::Cursor::new(p.zip)).unwrap();
        assert_eq!(archive.len(), 1);
        assert!(passing(dir.path())
            .unwrap()
            .dir
            .join("test_sample.py")
            .exists());
        assert!(sleeper(dir.path(), 2).unwrap().zip.len() > 20);
        let printer = printer(dir.path(), 2, 20).unwrap();
        let text = std::fs::read_to_string(printer.dir.join("test_printer.py")).unwrap();
        assert!(text.contains("range(100)") && text.contains("time.sleep(0.02)"));
        let many = many_tests(dir.path(), 50, 2).unwrap();
        let text = std::fs::read_to_string(many.dir.join("test_generated.py")).unwrap();
        assert!(
            text.contains("range(50)") && text.contains("i >= 2"),
            "{text}"
        );
        let huge = huge_report(dir.path(), 7).unwrap();
        let text = std::fs::read_to_string(huge.dir.join("conftest.py")).unwrap();
        assert!(text.contains("range(7)") && text.contains("/ci-report/junit.xml"));
    }
}

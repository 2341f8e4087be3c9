//! Reading a job's JUnit report (pytest's `--junitxml`) into test cases.
//!
//! The report is the job's own output, so it is treated as hostile: it is
//! read with a streaming parser (quick-xml, which never expands entities of
//! its own), its size and number of cases are capped, a DTD is refused
//! outright (no entity expansion, no external fetches) and so is any entity
//! other than XML's five and character references. Every way a report can be
//! wrong is a [`ReportError`], which becomes the reason a job has no results;
//! none of them touches the job's own result.

use ci_common::test_results::{TestCase, TestOutcome};
use ci_common::JobId;
use ci_persistence::{ReportChunk, Store, StoreError};
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::attributes::Attributes;
use quick_xml::events::{BytesRef, Event};
use quick_xml::Reader;

/// Where the job writes its report: a volume of the container's own (so it
/// outlives the container's exit and goes with its removal), outside the
/// workspace (so it never collides with the project's files).
pub const REPORT_DIR: &str = "/ci-report";
/// The report's path in the container.
pub const REPORT_PATH: &str = "/ci-report/junit.xml";

/// How much of a hostile report is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportLimits {
    /// Larger reports are not read at all.
    pub max_bytes: u64,
    /// A report with more test cases is refused (not cut: a partial list
    /// would count wrongly).
    pub max_cases: usize,
    /// A failure's traceback is cut to this many bytes.
    pub max_traceback_bytes: usize,
    /// A failure's message is cut to this many bytes.
    pub max_message_bytes: usize,
}

impl Default for ReportLimits {
    fn default() -> Self {
        ReportLimits {
            max_bytes: 30 * 1024 * 1024,
            max_cases: 200_000,
            max_traceback_bytes: 16 * 1024,
            max_message_bytes: 2 * 1024,
        }
    }
}

/// Why a report gave no test cases; its text is what the user is shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("pytest wrote no test report (the job ended before its tests ran, pytest was told not to write one, or the job image has no writable /ci-report)")]
    Missing,
    #[error("the test report is not a regular file")]
    NotAFile,
    #[error("the test report is {bytes} bytes, over the limit of {limit} bytes")]
    TooLarge { bytes: u64, limit: u64 },
    #[error("the test report has more than {limit} test cases")]
    TooManyCases { limit: usize },
    #[error("the test report declares a DTD, which is refused")]
    DtdRefused,
    #[error("the test report uses the entity &{0};, which is refused")]
    EntityRefused(String),
    #[error("the test report is truncated")]
    Truncated,
    #[error("the test report is malformed: {0}")]
    Malformed(String),
    #[error("the test report could not be read: {0}")]
    Unreadable(String),
}

/// Cases handed from the parser to the store at a time.
const CASES_PER_CHUNK: usize = 500;

/// Parses `xml` off the async threads and stores its cases as they are
/// parsed, in one transaction (see [`Store::put_job_cases`]), so a big
/// report's cases are never all in memory at once; a bad report stores why
/// there are no results. The outer error is the database's; the inner says
/// how many cases the report had, or what was wrong with it.
pub async fn store_report_xml(
    store: &Store,
    job_id: JobId,
    xml: Vec<u8>,
    limits: ReportLimits,
) -> Result<Result<usize, ReportError>, StoreError> {
    let (chunks, received) = tokio::sync::mpsc::channel(2);
    let parser = tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(CASES_PER_CHUNK);
        // A store that stopped listening (it failed) makes the rest moot.
        let parsed = parse_report_each(&xml, &limits, |case| {
            chunk.push(case);
            if chunk.len() == CASES_PER_CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CASES_PER_CHUNK));
                let _ = chunks.blocking_send(ReportChunk::Cases(full));
            }
        });
        let end = match &parsed {
            Ok(_) => {
                if !chunk.is_empty() {
                    let _ = chunks.blocking_send(ReportChunk::Cases(chunk));
                }
                ReportChunk::Done
            }
            Err(e) => ReportChunk::Failed(e.to_string()),
        };
        let _ = chunks.blocking_send(end);
        parsed
    });
    let stored = store.put_job_cases(job_id, received).await;
    let parsed = parser
        .await
        .unwrap_or_else(|e| Err(ReportError::Unreadable(format!("parsing stopped: {e}"))));
    stored.map(|()| parsed)
}

/// A case being read: what its `<testcase>` and result element said so far.
struct CaseBuilder {
    classname: String,
    name: String,
    file: Option<String>,
    duration_seconds: f64,
    outcome: TestOutcome,
    message: Option<String>,
    traceback: Option<String>,
}

/// Text cut to `limit` bytes on a character boundary, with a marker.
struct CappedText {
    text: String,
    limit: usize,
    cut: usize,
}

impl CappedText {
    fn new(limit: usize) -> Self {
        CappedText {
            text: String::new(),
            limit,
            cut: 0,
        }
    }

    fn push(&mut self, s: &str) {
        let room = self.limit.saturating_sub(self.text.len());
        if s.len() <= room {
            self.text.push_str(s);
        } else {
            let mut end = room;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            self.text.push_str(&s[..end]);
            self.cut += s.len() - end;
        }
    }

    fn finish(mut self) -> String {
        if self.cut > 0 {
            self.text
                .push_str(&format!("\n[ci] … cut: {} more bytes\n", self.cut));
        }
        self.text
    }
}

fn capped(s: &str, limit: usize) -> String {
    let mut text = CappedText::new(limit);
    text.push(s);
    text.finish()
}

fn malformed(e: impl std::fmt::Display) -> ReportError {
    ReportError::Malformed(e.to_string())
}

/// The value of one entity reference: a character reference or one of XML's
/// five; anything else (an entity a DTD would define) is refused.
fn resolve_reference(reference: &BytesRef<'_>) -> Result<String, ReportError> {
    if let Some(c) = reference.resolve_char_ref().map_err(malformed)? {
        return Ok(c.to_string());
    }
    let name = reference.xml10_content();
    resolve_predefined_entity(&name)
        .map(str::to_string)
        .ok_or_else(|| ReportError::EntityRefused(name.into_owned()))
}

/// The attributes of an element, unescaped; an unknown entity is refused.
fn attributes(attrs: Attributes<'_>) -> Result<Vec<(String, String)>, ReportError> {
    let mut out = Vec::new();
    for attr in attrs {
        let attr = attr.map_err(malformed)?;
        let key = attr.key.as_ref().to_string();
        let value =
            attr.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|e| match e {
                    quick_xml::Error::Escape(
                        quick_xml::escape::EscapeError::UnrecognizedEntity(_, name),
                    ) => ReportError::EntityRefused(name),
                    e => malformed(e),
                })?;
        out.push((key, value.into_owned()));
    }
    Ok(out)
}

fn attribute<'a>(attrs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// pytest's node id of a case: `file::Class::name` from the file and the
/// dotted class name that pytest's xunit1 report writes. Without a file (an
/// xunit2 report), the dotted class name stands for the file and classes.
fn node_id(file: Option<&str>, classname: &str, name: &str) -> String {
    let Some(file) = file else {
        return if classname.is_empty() {
            name.to_string()
        } else {
            format!("{classname}::{name}")
        };
    };
    if classname.is_empty() {
        // A collection error: pytest names the module; its node id is the file.
        return file.to_string();
    }
    let module = file.strip_suffix(".py").unwrap_or(file).replace('/', ".");
    match classname.strip_prefix(&module) {
        Some("") => format!("{file}::{name}"),
        Some(classes) if classes.starts_with('.') => {
            format!("{file}{}::{name}", classes.replace('.', "::"))
        }
        _ => format!("{file}::{name}"),
    }
}

impl CaseBuilder {
    fn start(attrs: &[(String, String)]) -> CaseBuilder {
        CaseBuilder {
            classname: attribute(attrs, "classname").unwrap_or("").to_string(),
            name: attribute(attrs, "name").unwrap_or("").to_string(),
            file: attribute(attrs, "file").map(str::to_string),
            duration_seconds: attribute(attrs, "time")
                .and_then(|t| t.trim().parse::<f64>().ok())
                .filter(|t| t.is_finite() && *t >= 0.0)
                .unwrap_or(0.0),
            outcome: TestOutcome::Passed,
            message: None,
            traceback: None,
        }
    }

    /// A `<failure>`, `<error>` or `<skipped>` inside the case. pytest marks
    /// an xfail as skipped of type `pytest.xfail` and a strict xpass as a
    /// failure `[XPASS(strict)] …` (pytest 7 to 9); a non-strict xpass is a
    /// plain pass in the report.
    fn result(&mut self, element: &str, attrs: &[(String, String)], limits: &ReportLimits) {
        let message = attribute(attrs, "message").unwrap_or("");
        let outcome = match element {
            "failure" if message.starts_with("[XPASS(strict)]") => TestOutcome::Xpassed,
            "failure" => TestOutcome::Failed,
            "error" => TestOutcome::Error,
            _ if attribute(attrs, "type") == Some("pytest.xfail") => TestOutcome::Xfailed,
            _ if message == "xfail-marked test passes unexpectedly" => TestOutcome::Xpassed,
            _ => TestOutcome::Skipped,
        };
        // A failure and a teardown error of one test: the failure is kept.
        if self.outcome == TestOutcome::Passed || !self.outcome.is_failure() {
            self.outcome = outcome;
            self.message = (!message.is_empty()).then(|| capped(message, limits.max_message_bytes));
        }
    }

    fn finish(self) -> TestCase {
        TestCase {
            id: node_id(self.file.as_deref(), &self.classname, &self.name),
            file: self.file,
            name: self.name,
            outcome: self.outcome,
            duration_seconds: self.duration_seconds,
            message: self.message.map(without_terminal_colours),
            traceback: self.traceback.map(without_terminal_colours),
        }
    }
}

/// `text` without the terminal colour sequences pytest writes into its
/// report when colours are on (`PY_COLORS=1`, which jobs have): XML cannot
/// hold the escape character, so pytest spells it `#x1B`. Stored results
/// are text for any reader; the job's output keeps its colours.
fn without_terminal_colours(text: String) -> String {
    const ESCAPE: &str = "#x1B[";
    if !text.contains(ESCAPE) {
        return text;
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find(ESCAPE) {
        out.push_str(&rest[..at]);
        let after = &rest[at + ESCAPE.len()..];
        // Parameters, then one final letter (`m` for colours).
        let parameters = after
            .find(|c: char| !(c.is_ascii_digit() || c == ';'))
            .unwrap_or(after.len());
        match after[parameters..].chars().next() {
            Some(c) if c.is_ascii_alphabetic() => rest = &after[parameters + 1..],
            _ => {
                out.push_str(ESCAPE);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn is_result(name: &str) -> bool {
    matches!(name, "failure" | "error" | "skipped")
}

/// The test cases of a JUnit report, in report order.
pub fn parse_report(xml: &[u8], limits: &ReportLimits) -> Result<Vec<TestCase>, ReportError> {
    let mut cases = Vec::new();
    parse_report_each(xml, limits, |case| cases.push(case))?;
    Ok(cases)
}

/// As [`parse_report`], handing each case to `on_case` as soon as it is
/// read, so a big report's cases need not all be in memory at once; the
/// number of cases when the whole report is good. On an error, the cases
/// handed over so far are to be thrown away.
pub fn parse_report_each(
    xml: &[u8],
    limits: &ReportLimits,
    mut on_case: impl FnMut(TestCase),
) -> Result<usize, ReportError> {
    if xml.len() as u64 > limits.max_bytes {
        return Err(ReportError::TooLarge {
            bytes: xml.len() as u64,
            limit: limits.max_bytes,
        });
    }
    let mut reader = Reader::from_reader(xml);
    reader.config_mut().check_end_names = true;
    let mut buf = Vec::new();
    let mut cases = 0usize;
    let mut depth = 0usize;
    let mut saw_root = false;
    let mut case: Option<CaseBuilder> = None;
    // The traceback of the result element being read, and its depth.
    let mut traceback: Option<(CappedText, usize)> = None;
    loop {
        buf.clear();
        let event = match reader.read_event_into(&mut buf) {
            Ok(event) => event,
            // Cut short inside markup: the document just stops.
            Err(_) if reader.buffer_position() >= xml.len() as u64 => {
                return Err(ReportError::Truncated)
            }
            Err(e) => return Err(malformed(e)),
        };
        match event {
            Event::DocType(_) => return Err(ReportError::DtdRefused),
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(event, Event::Empty(_));
                let name = e.name();
                let name = name.as_ref();
                if depth == 0 {
                    if !matches!(name, "testsuites" | "testsuite") {
                        return Err(ReportError::Malformed(format!(
                            "the root element is <{}>, not <testsuites> or <testsuite>",
                            name
                        )));
                    }
                    saw_root = true;
                }
                let attrs = attributes(e.attributes())?;
                if name == "testcase" && case.is_none() {
                    let started = CaseBuilder::start(&attrs);
                    if empty {
                        if cases >= limits.max_cases {
                            return Err(ReportError::TooManyCases {
                                limit: limits.max_cases,
                            });
                        }
                        cases += 1;
                        on_case(started.finish());
                    } else {
                        case = Some(started);
                    }
                } else if let Some(current) = case.as_mut().filter(|_| is_result(name)) {
                    current.result(name, &attrs, limits);
                    if !empty && traceback.is_none() {
                        traceback = Some((CappedText::new(limits.max_traceback_bytes), depth + 1));
                    }
                }
                if !empty {
                    depth += 1;
                }
            }
            Event::End(ref e) => {
                let name = e.name();
                if let Some((text, at)) = traceback.take_if(|(_, at)| *at == depth) {
                    let _ = at;
                    if let Some(current) = case.as_mut() {
                        let text = text.finish();
                        if !text.is_empty() && current.traceback.is_none() {
                            current.traceback = Some(text);
                        }
                    }
                }
                depth = depth.saturating_sub(1);
                if name.as_ref() == "testcase" {
                    if let Some(done) = case.take() {
                        if cases >= limits.max_cases {
                            return Err(ReportError::TooManyCases {
                                limit: limits.max_cases,
                            });
                        }
                        cases += 1;
                        on_case(done.finish());
                    }
                }
            }
            Event::Text(ref t) => {
                if let Some((text, _)) = traceback.as_mut() {
                    text.push(&t.xml10_content());
                }
            }
            Event::CData(ref t) => {
                if let Some((text, _)) = traceback.as_mut() {
                    text.push(&t.xml10_content());
                }
            }
            Event::GeneralRef(ref r) => {
                let value = resolve_reference(r)?;
                if let Some((text, _)) = traceback.as_mut() {
                    text.push(&value);
                }
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
        }
    }
    if depth > 0 {
        return Err(ReportError::Truncated);
    }
    if !saw_root {
        return Err(if xml.iter().all(u8::is_ascii_whitespace) {
            ReportError::Truncated
        } else {
            ReportError::Malformed("no <testsuites> element".into())
        });
    }
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What pytest 7.2 wrote for `fixtures/test-outcomes` with the job's flags.
    const PYTEST7: &[u8] = include_bytes!("../testdata/pytest7-outcomes.xml");

    fn limits() -> ReportLimits {
        ReportLimits::default()
    }

    #[test]
    fn every_outcome_of_a_real_pytest_report_is_read() {
        let cases = parse_report(PYTEST7, &limits()).expect("a good report");
        let got: Vec<(&str, TestOutcome)> =
            cases.iter().map(|c| (c.id.as_str(), c.outcome)).collect();
        let file = "tests/test_outcomes.py";
        assert_eq!(
            got,
            [
                (&*format!("{file}::test_passes"), TestOutcome::Passed),
                (&*format!("{file}::test_fails"), TestOutcome::Failed),
                (&*format!("{file}::test_errors"), TestOutcome::Error),
                (&*format!("{file}::test_skipped"), TestOutcome::Skipped),
                (&*format!("{file}::test_xfails"), TestOutcome::Xfailed),
                (
                    &*format!("{file}::test_xpasses_strictly"),
                    TestOutcome::Xpassed
                ),
                (
                    &*format!("{file}::TestGroup::test_in_class[1]"),
                    TestOutcome::Passed
                ),
                (
                    &*format!("{file}::TestGroup::test_in_class[2]"),
                    TestOutcome::Passed
                ),
            ]
        );
        let failed = &cases[1];
        assert_eq!(failed.file.as_deref(), Some(file));
        assert_eq!(failed.name, "test_fails");
        assert_eq!(
            failed.message.as_deref(),
            Some("AssertionError: arithmetic is broken\nassert (1 + 1) == 3")
        );
        let traceback = failed.traceback.as_deref().expect("a traceback");
        assert!(
            traceback.contains(">       assert 1 + 1 == 3"),
            "{traceback}"
        );
        assert!(cases[2]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("the fixture cannot set up")));
        assert_eq!(cases[4].message.as_deref(), Some("known bug"));
        assert_eq!(cases[0].traceback, None);
    }

    #[test]
    fn durations_are_read() {
        let xml = br#"<testsuites><testsuite><testcase classname="t" name="a" time="1.25"/><testcase classname="t" name="b" time="nope"/></testsuite></testsuites>"#;
        let cases = parse_report(xml, &limits()).unwrap();
        assert_eq!(cases[0].duration_seconds, 1.25);
        assert_eq!(cases[1].duration_seconds, 0.0, "unreadable is zero");
        assert_eq!(cases[0].id, "t::a", "an xunit2 report has no file");
    }

    #[test]
    fn collection_errors_are_errors_of_the_file() {
        let xml = br#"<testsuites><testsuite><testcase classname="" name="tests.test_broken" file="tests/test_broken.py" time="0.000"><error message="collection failure">SyntaxError</error></testcase></testsuite></testsuites>"#;
        let cases = parse_report(xml, &limits()).unwrap();
        assert_eq!(cases[0].id, "tests/test_broken.py");
        assert_eq!(cases[0].outcome, TestOutcome::Error);
    }

    #[test]
    fn terminal_colours_are_no_part_of_a_stored_traceback() {
        // What pytest writes with PY_COLORS=1.
        let xml = br#"<testsuites><testsuite><testcase classname="test_a" name="test_a" file="test_a.py" time="0.0"><failure message="assert (1 + 1) == 3">&gt;       #x1B[94massert#x1B[39;49;00m #x1B[94m1#x1B[39;49;00m + 1 == 3
#x1B[1m#x1B[31mE       assert (1 + 1) == 3#x1B[0m #x1B[ is text</failure></testcase></testsuite></testsuites>"#;
        let cases = parse_report(xml, &limits()).expect("a good report");
        assert_eq!(
            cases[0].traceback.as_deref(),
            Some(">       assert 1 + 1 == 3\nE       assert (1 + 1) == 3 #x1B[ is text")
        );
    }

    #[test]
    fn tracebacks_and_messages_are_cut_to_their_limits() {
        let long = "é".repeat(10_000);
        let xml = format!(
            r#"<testsuites><testsuite><testcase classname="t" name="a"><failure message="{long}">{long}</failure></testcase></testsuite></testsuites>"#
        );
        let limits = ReportLimits {
            max_traceback_bytes: 1001,
            max_message_bytes: 11,
            ..limits()
        };
        let case = &parse_report(xml.as_bytes(), &limits).unwrap()[0];
        let traceback = case.traceback.as_deref().unwrap();
        assert!(traceback.starts_with(&"é".repeat(500)));
        assert!(
            traceback.ends_with("[ci] … cut: 19000 more bytes\n"),
            "{traceback}"
        );
        assert!(case.message.as_deref().unwrap().starts_with("ééééé\n[ci]"));
    }

    #[test]
    fn oversized_reports_are_not_parsed() {
        let limits = ReportLimits {
            max_bytes: PYTEST7.len() as u64 - 1,
            ..limits()
        };
        assert_eq!(
            parse_report(PYTEST7, &limits),
            Err(ReportError::TooLarge {
                bytes: PYTEST7.len() as u64,
                limit: PYTEST7.len() as u64 - 1
            })
        );
    }

    #[test]
    fn more_cases_than_the_limit_are_refused() {
        let report = |n: usize| {
            let mut xml = String::from("<testsuites><testsuite>");
            for i in 0..n {
                xml.push_str(&format!(
                    r#"<testcase classname="t" name="test_{i}" time="0"/>"#
                ));
            }
            xml.push_str("</testsuite></testsuites>");
            xml
        };
        let limits = limits();
        let at_limit = parse_report(report(200_000).as_bytes(), &limits).unwrap();
        assert_eq!(at_limit.len(), 200_000);
        assert_eq!(
            parse_report(report(200_001).as_bytes(), &limits),
            Err(ReportError::TooManyCases { limit: 200_000 })
        );
    }

    #[test]
    fn dtds_and_entities_are_refused() {
        let billion_laughs = br#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]>
<testsuites><testsuite><testcase classname="t" name="a"><failure message="x">&lol2;</failure></testcase></testsuite></testsuites>"#;
        assert_eq!(
            parse_report(billion_laughs, &limits()),
            Err(ReportError::DtdRefused)
        );
        let external = br#"<!DOCTYPE t SYSTEM "file:///etc/passwd"><testsuites/>"#;
        assert_eq!(
            parse_report(external, &limits()),
            Err(ReportError::DtdRefused)
        );
        let undeclared_in_text = br#"<testsuites><testsuite><testcase classname="t" name="a"><failure message="x">&xxe;</failure></testcase></testsuite></testsuites>"#;
        assert_eq!(
            parse_report(undeclared_in_text, &limits()),
            Err(ReportError::EntityRefused("xxe".into()))
        );
        let undeclared_in_attribute =
            br#"<testsuites><testsuite><testcase classname="t" name="&xxe;"/></testsuite></testsuites>"#;
        assert_eq!(
            parse_report(undeclared_in_attribute, &limits()),
            Err(ReportError::EntityRefused("xxe".into()))
        );
        let predefined = br#"<testsuites><testsuite><testcase classname="t" name="a&amp;&#98;"><failure message="&lt;x&gt;">&lt;&#x41;&gt;</failure></testcase></testsuite></testsuites>"#;
        let case = &parse_report(predefined, &limits()).unwrap()[0];
        assert_eq!(case.name, "a&b");
        assert_eq!(case.message.as_deref(), Some("<x>"));
        assert_eq!(case.traceback.as_deref(), Some("<A>"));
    }

    #[test]
    fn truncated_and_malformed_reports_say_so() {
        for cut in [10, PYTEST7.len() / 2, PYTEST7.len() - 3] {
            assert_eq!(
                parse_report(&PYTEST7[..cut], &limits()),
                Err(ReportError::Truncated),
                "cut at {cut}"
            );
        }
        assert_eq!(parse_report(b"", &limits()), Err(ReportError::Truncated));
        for bad in [
            &b"<testsuites><testsuite></testcase></testsuites>"[..],
            b"not xml at all",
            b"<html><body>hello</body></html>",
            b"<testsuites a=b></testsuites>",
        ] {
            assert!(
                matches!(parse_report(bad, &limits()), Err(ReportError::Malformed(_))),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                parse_report(bad, &limits())
            );
        }
    }
}

//! `ci submit test` in a checkout with symbolic links: links into the project
//! are uploaded as what they point to; links out of it never send the user's
//! other files anywhere.

#![cfg(unix)]

use std::os::unix::fs::symlink;

use ci_testkit::{copy_fixture, TestSystem};

const FAKE_KEY: &str = "-----BEGIN FAKE PRIVATE KEY----- e2e-not-a-real-key";

#[test]
fn links_out_of_the_project_are_not_uploaded_and_links_inside_are() {
    let sys = TestSystem::start();
    let secret = sys.home().join(".ssh/id_rsa");
    std::fs::create_dir_all(secret.parent().expect("a parent")).expect("mkdir ~/.ssh");
    std::fs::write(&secret, FAKE_KEY).expect("write the fake key");

    let project = copy_fixture("no-requirements");
    let root = project.path();
    symlink(&secret, root.join("notes.txt")).expect("link");
    std::fs::create_dir(root.join("tests")).expect("mkdir");
    symlink("../notes.txt", root.join("tests/data.txt")).expect("link");
    symlink(sys.home().join(".ssh"), root.join("keys")).expect("link");
    symlink("greeting.py", root.join("alias.py")).expect("link");
    // The job itself looks for anything that came from outside.
    project.write(
        "test_links.py",
        "import pathlib\n\
         \n\
         def test_nothing_from_outside_the_project_arrived():\n    \
             leaked = [str(p) for p in pathlib.Path('.').rglob('*')\n              \
                       if p.is_file() and 'FAKE PRIVATE' + ' KEY' in p.read_text(errors='replace')]\n    \
             assert leaked == []\n    \
             for name in ['notes.txt', 'tests/data.txt', 'keys']:\n        \
                 assert not pathlib.Path(name).exists(), name\n\
         \n\
         def test_a_link_inside_the_project_arrives_as_its_file():\n    \
             import alias\n    \
             assert alias.greet('x') == 'Hello, x!'\n",
    );

    let out = sys.submit_sync(&project);

    out.assert_code(0);
    assert!(
        !out.stdout.contains(FAKE_KEY),
        "the key was uploaded\n{out}"
    );
    assert!(!out.stderr.contains(FAKE_KEY), "{out}");
    assert!(
        out.stdout
            .contains("::test_nothing_from_outside_the_project_arrived PASSED"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("::test_a_link_inside_the_project_arrives_as_its_file PASSED"),
        "{out}"
    );
    for path in ["notes.txt", "tests/data.txt", "keys"] {
        let warnings = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("warning: ") && l.contains(&format!(" {path}:")))
            .count();
        assert_eq!(warnings, 1, "one warning naming {path}\n{out}");
    }
    sys.assert_settled();
}

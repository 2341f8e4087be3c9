//! Arbitrary bytes as an uploaded project: the unpacker must never panic, and
//! whatever it accepts must be a tar of plain files and folders inside the
//! workspace, within the limits it was given, and the directory's answer to
//! "is there a requirements.txt" (which picks the job's root file system)
//! must be what the tar holds.

#![no_main]

use std::path::Component;

use std::io::Cursor;
use std::path::Path;

use ci_controller::workspace::{zip_to_tar, ProjectArchive, UnpackLimits};
use libfuzzer_sys::fuzz_target;

const LIMITS: UnpackLimits = UnpackLimits {
    max_total_bytes: 1 << 20,
    max_entries: 64,
};

fuzz_target!(|data: &[u8]| {
    let Ok(tar) = zip_to_tar(data, LIMITS) else {
        return;
    };
    let promised = ProjectArchive::open(Cursor::new(data), LIMITS)
        .expect("an archive that unpacked opens")
        .has_file("requirements.txt");
    let mut requirements = false;
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut entries = 0usize;
    let mut total = 0u64;
    for entry in archive.entries().expect("the unpacker's tar reads back") {
        let entry = entry.expect("every entry of the unpacker's tar reads back");
        entries += 1;
        let path = entry.path().expect("a path").into_owned();
        assert!(
            path.components().all(|c| matches!(c, Component::Normal(_))),
            "entry {path:?} could leave the workspace"
        );
        let kind = entry.header().entry_type();
        assert!(
            kind.is_file() || kind.is_dir(),
            "entry {path:?} is a {kind:?}"
        );
        requirements |= kind.is_file() && path == Path::new("requirements.txt");
        total += entry.size();
    }
    assert_eq!(promised, requirements, "requirements.txt in the directory and the tar");
    assert!(entries <= LIMITS.max_entries, "{entries} entries");
    assert!(total <= LIMITS.max_total_bytes, "{total} bytes");
});

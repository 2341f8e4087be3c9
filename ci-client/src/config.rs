//! Where the CLI's settings come from: the server URL and the API key.

use std::path::{Path, PathBuf};

/// Where `ci` talks to when neither `--server-url` nor `CI_SERVER_URL` is set.
pub const DEFAULT_SERVER_URL: &str = "http://localhost:8000";

/// The line prefix that names the key in `~/.ci/config`.
const CONFIG_KEY_PREFIX: &str = "api_key=";

/// `~/.ci/config`, the file the API key is read from last; `None` when no home
/// folder is known.
pub fn default_config_path() -> Option<PathBuf> {
    dirs::home_dir().map(|home| home.join(".ci").join("config"))
}

/// The API key by priority: the flag, then the environment variable, then the
/// config file. An empty value counts as absent and falls through to the next
/// source, as in the reference client. The paths are parameters so tests need
/// not touch the real home folder or environment.
pub fn resolve_api_key(
    flag: Option<&str>,
    env: Option<&str>,
    config_file: Option<&Path>,
) -> Option<String> {
    let non_empty = |v: Option<&str>| v.filter(|v| !v.is_empty()).map(str::to_string);
    non_empty(flag)
        .or_else(|| non_empty(env))
        .or_else(|| config_file.and_then(read_config_api_key))
}

/// The key from the first line of the file that starts with `api_key=`
/// (after trimming), trimmed. A file that is missing or unreadable gives no
/// key, silently: it is only the last of three sources.
pub fn read_config_api_key(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix(CONFIG_KEY_PREFIX))
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), text).expect("write config");
        file
    }

    #[test]
    fn flag_wins_over_env_and_file() {
        let file = config_with("api_key=ci_file\n");
        assert_eq!(
            resolve_api_key(Some("ci_flag"), Some("ci_env"), Some(file.path())).as_deref(),
            Some("ci_flag")
        );
    }

    #[test]
    fn env_wins_over_file() {
        let file = config_with("api_key=ci_file\n");
        assert_eq!(
            resolve_api_key(None, Some("ci_env"), Some(file.path())).as_deref(),
            Some("ci_env")
        );
    }

    #[test]
    fn file_is_the_last_resort() {
        let file = config_with("# my settings\n  api_key= ci_file  \napi_key=ci_second\n");
        assert_eq!(
            resolve_api_key(None, None, Some(file.path())).as_deref(),
            Some("ci_file")
        );
    }

    #[test]
    fn empty_values_fall_through() {
        let file = config_with("api_key=ci_file\n");
        assert_eq!(
            resolve_api_key(Some(""), Some(""), Some(file.path())).as_deref(),
            Some("ci_file")
        );
    }

    #[test]
    fn no_source_gives_no_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("config");
        assert_eq!(resolve_api_key(None, None, Some(&missing)), None);
        assert_eq!(resolve_api_key(None, None, None), None);
        let file = config_with("api_key = spaced\nother=1\n");
        assert_eq!(resolve_api_key(None, None, Some(file.path())), None);
    }
}

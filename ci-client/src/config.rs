//! Where the CLI's settings come from: the server URL and the API key.

use std::path::{Path, PathBuf};

/// Where `ci` talks to when neither `--server-url` nor `CI_SERVER_URL` is set.
pub const DEFAULT_SERVER_URL: &str = "http://localhost:8000";

/// `~/.ci/config`, the file the API key is read from last; `None` when no home
/// folder is known.
pub fn default_config_path() -> Option<PathBuf> {
    dirs::home_dir().map(|home| home.join(".ci").join("config"))
}

/// Where the API key in use came from, for `ci config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Flag,
    Env,
    ConfigFile,
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeySource::Flag => "--api-key",
            KeySource::Env => "CI_API_KEY",
            KeySource::ConfigFile => "~/.ci/config",
        })
    }
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
    resolve_api_key_with_source(flag, env, config_file).map(|(key, _)| key)
}

/// [`resolve_api_key`], also saying which source won.
pub fn resolve_api_key_with_source(
    flag: Option<&str>,
    env: Option<&str>,
    config_file: Option<&Path>,
) -> Option<(String, KeySource)> {
    let non_empty = |v: Option<&str>| v.filter(|v| !v.is_empty()).map(str::to_string);
    non_empty(flag)
        .map(|k| (k, KeySource::Flag))
        .or_else(|| non_empty(env).map(|k| (k, KeySource::Env)))
        .or_else(|| {
            config_file
                .and_then(read_config_api_key)
                .map(|k| (k, KeySource::ConfigFile))
        })
}

/// The key from the first `api_key` line of the file, trimmed. A file that
/// is missing or unreadable gives no key, silently: it is only the last of
/// three sources.
pub fn read_config_api_key(path: &Path) -> Option<String> {
    read_config_value(path, "api_key")
}

/// The `server_url` line of the config file, used when neither the flag nor
/// `CI_SERVER_URL` names a server.
pub fn read_config_server_url(path: &Path) -> Option<String> {
    read_config_value(path, "server_url")
}

/// The value of the first `name=value` line for `name`: spaces around the
/// `=` and quotes around the value (`api_key = "ci_…"`) are allowed, as
/// people write such files by hand; `#` lines are comments.
fn read_config_value(path: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.split_once('=')?;
            (key.trim() == name).then(|| unquote(value.trim()).to_string())
        })
        .filter(|value| !value.is_empty())
}

fn unquote(value: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote))
        {
            return inner.trim();
        }
    }
    value
}

/// A key shown without giving it away: its start and its last four characters.
pub fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 12 {
        return "…".to_string();
    }
    let head: String = chars[..6].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
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
    }

    #[test]
    fn spaces_quotes_and_the_server_url_are_read() {
        let file =
            config_with("# mine\nserver_url = 'https://ci.example.com'\napi_key = \"ci_spaced\"\n");
        assert_eq!(
            resolve_api_key_with_source(None, None, Some(file.path())),
            Some(("ci_spaced".to_string(), KeySource::ConfigFile))
        );
        assert_eq!(
            read_config_server_url(file.path()).as_deref(),
            Some("https://ci.example.com")
        );
        let file = config_with("api_key_old=x\n#api_key=ci_commented\n");
        assert_eq!(read_config_api_key(file.path()), None);
    }

    #[test]
    fn masked_keys_keep_only_their_ends() {
        let key = format!("ci_{}", "a".repeat(36) + "WXYZ");
        assert_eq!(mask_key(&key), "ci_aaa…WXYZ");
        assert_eq!(mask_key("short"), "…");
    }
}

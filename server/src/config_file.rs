//! The settings layers of `tessera-server serve`: command-line flags, then `TESSERA_…`
//! environment variables, then a TOML file (`--config FILE`), then the built-in defaults.
//!
//! The command line is the single description of every setting (its name, type, parser,
//! default and help). This module adds the two other layers onto it rather than describing the
//! settings a second time:
//!
//! - every setting without an environment variable of its own gets `TESSERA_<NAME>` (the
//!   setting's name in upper case: `max_pending_per_user` is `TESSERA_MAX_PENDING_PER_USER`);
//! - each key of the file becomes the setting's default value, checked with the setting's own
//!   parser first. clap then picks a flag over its environment variable over its default, which
//!   gives flags > environment > file > built-in defaults. A key that names no setting, a value
//!   of the wrong type or one the setting's parser refuses is an error naming the key.
//!
//! A key of the file is the setting's name as in `serve --help`'s flags, in snake case
//! (`--public-url` is `public_url`; repeatable flags take an array: `trusted_proxies = [...]`).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use clap::Command;

/// Settings of the command line that are not settings of the server and never come from the
/// file or the environment.
const NOT_SETTINGS: &[&str] = &["help", "version", "config", "check_config"];

/// A settings file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file cannot be read.
    #[error("config file {path}: cannot be read: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why (the operating system's reason).
        reason: String,
    },
    /// The file is not TOML.
    #[error("config file {path}: not valid TOML: {reason}")]
    NotToml {
        /// The file.
        path: PathBuf,
        /// The parser's message (position and expectation).
        reason: String,
    },
    /// A key names no setting.
    #[error("config file {path}: unknown key `{key}` ({hint})")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What the key should be: the setting's own key when the key is a flag's name or a
        /// variable's name (without `TESSERA_`) whose setting is named otherwise, else where the
        /// keys are listed.
        hint: String,
    },
    /// The command line or an environment variable has a value clap refuses.
    #[error("{0}")]
    CommandLine(String),
    /// A value has the wrong type or is refused by the setting's parser.
    #[error("config file {path}: key `{key}`: {reason}")]
    InvalidValue {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong (never the value itself: it may be a secret).
        reason: String,
    },
}

/// The name of the environment variable of a setting that has none of its own.
pub fn environment_variable(setting: &str) -> String {
    format!("TESSERA_{}", setting.to_ascii_uppercase())
}

/// Gives every setting of `serve` (the subcommand `command`) an environment variable
/// (`TESSERA_<NAME>`) unless it has one already.
pub fn with_environment(command: Command) -> Command {
    let ids: Vec<String> = command
        .get_arguments()
        .filter(|arg| arg.get_env().is_none() && !arg.is_positional())
        .map(|arg| arg.get_id().as_str().to_string())
        .filter(|id| !NOT_SETTINGS.contains(&id.as_str()))
        .collect();
    ids.into_iter().fold(command, |command, id| {
        let variable = environment_variable(&id);
        command.mut_arg(id, |arg| arg.env(variable))
    })
}

/// Reads the TOML file at `path` and makes its keys the defaults of `serve`'s settings.
pub fn apply_file(command: Command, path: &Path) -> Result<Command, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigFileError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    apply_text(command, path, &text)
}

/// What an unknown `key` should have been: when it is a flag's name in snake case
/// (`attestation_root` for `--attestation-root`, whose setting is `attestation_roots`) or an
/// environment variable's name without its `TESSERA_` prefix (`database_url` for
/// `TESSERA_DATABASE_URL`, whose setting is `database`) and the setting has another name, that
/// setting's key; otherwise where the keys are listed.
fn unknown_key_hint(command: &Command, key: &str) -> String {
    let variable = format!("TESSERA_{}", key.to_ascii_uppercase());
    command
        .get_arguments()
        .filter(|arg| {
            let id = arg.get_id().as_str();
            id != key && !NOT_SETTINGS.contains(&id)
        })
        .find_map(|arg| {
            let by_flag = arg
                .get_long()
                .filter(|long| long.replace('-', "_") == key)
                .map(|long| format!("--{long}"));
            let by_variable = arg
                .get_env()
                .and_then(|env| env.to_str())
                .filter(|env| *env == variable)
                .map(str::to_string);
            by_flag
                .or(by_variable)
                .map(|named| format!("{named} is `{}` in the file", arg.get_id()))
        })
        .unwrap_or_else(|| {
            "the keys are serve's flags in snake case, see docs/operations.md".to_string()
        })
}

/// [`apply_file`] with the file's text.
pub fn apply_text(command: Command, path: &Path, text: &str) -> Result<Command, ConfigFileError> {
    let table: toml::Table =
        text.parse()
            .map_err(|e: toml::de::Error| ConfigFileError::NotToml {
                path: path.to_path_buf(),
                reason: e.message().to_string(),
            })?;
    let mut defaults: Vec<(String, Vec<String>)> = Vec::new();
    for (key, value) in &table {
        let invalid = |reason: String| ConfigFileError::InvalidValue {
            path: path.to_path_buf(),
            key: key.clone(),
            reason,
        };
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_id().as_str() == key && !NOT_SETTINGS.contains(&key.as_str()))
            .ok_or_else(|| ConfigFileError::UnknownKey {
                path: path.to_path_buf(),
                key: key.clone(),
                hint: unknown_key_hint(&command, key),
            })?;
        let repeatable = matches!(arg.get_action(), clap::ArgAction::Append);
        let values = match value {
            toml::Value::Array(items) if repeatable => items
                .iter()
                .map(|item| {
                    scalar(item)
                        .ok_or_else(|| invalid("expected an array of strings or numbers".into()))
                })
                .collect::<Result<Vec<_>, _>>()?,
            toml::Value::Array(_) => {
                return Err(invalid("expected one value, not an array".into()));
            }
            other => vec![
                scalar(other)
                    .ok_or_else(|| invalid("expected a string, a number or a boolean".into()))?,
            ],
        };
        // The setting's own parser, run on a command of that one setting (a default value is
        // only checked by clap when it is used).
        let probe = Command::new("probe").arg(
            clap::Arg::new("value")
                .long("value")
                .action(clap::ArgAction::Set)
                .value_parser(arg.get_value_parser().clone()),
        );
        for value in &values {
            let mut flag = std::ffi::OsString::from("--value=");
            flag.push(value);
            probe
                .clone()
                .try_get_matches_from([OsStr::new("probe"), flag.as_os_str()])
                .map_err(|e| invalid(reason_of(&e.to_string())))?;
        }
        defaults.push((key.clone(), values));
    }
    Ok(defaults
        .into_iter()
        .fold(command, |command, (key, values)| {
            command.mut_arg(key, |arg| arg.default_values(values))
        }))
}

/// A TOML scalar as the text a flag would have been given.
fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Datetime(_) | toml::Value::Array(_) | toml::Value::Table(_) => None,
    }
}

/// clap's message about the command line on one line, without the refused value (an
/// environment variable may hold a secret) and without the usage lines.
pub fn describe_clap_error(message: &str) -> String {
    let paragraph: Vec<&str> = message
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let joined = paragraph.join(" ");
    let first = joined.trim_start_matches("error: ").trim();
    let described = match (first.strip_prefix("invalid value '"), first.find("' for '")) {
        (Some(_), Some(end)) => format!("invalid value for {}", &first[end + "' for ".len()..]),
        _ => first.to_string(),
    };
    let mut described = described;
    // Named once: the first paragraph may already end with them.
    if let Some(possible) = message.lines().find(|l| l.contains("possible values"))
        && !described.contains(possible.trim())
    {
        described.push(' ');
        described.push_str(possible.trim());
    }
    described
}

/// What clap says is wrong with a value, without the value (it may be a secret) and without
/// the probe's flag name.
fn reason_of(message: &str) -> String {
    let mut lines = message.lines();
    let first = lines.next().unwrap_or_default();
    let mut reason = match first.split_once("': ") {
        Some((_, why)) => format!("invalid value: {}", why.trim()),
        None => "invalid value".to_string(),
    };
    if let Some(possible) = lines.find(|l| l.contains("possible values")) {
        reason.push(' ');
        reason.push_str(possible.trim());
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_choice_names_the_flag_and_its_choices_once_and_not_the_value() {
        let command = Command::new("serve").arg(
            clap::Arg::new("log_format")
                .long("log-format")
                .value_parser(["text", "json"]),
        );
        let error = command
            .try_get_matches_from(["serve", "--log-format", "s3cret"])
            .expect_err("refused");
        let described = describe_clap_error(&error.render().to_string());
        assert_eq!(
            described,
            "invalid value for '--log-format <log_format>' [possible values: text, json]"
        );
    }
    use clap::{Arg, ArgAction};

    fn serve() -> Command {
        Command::new("serve")
            .arg(
                Arg::new("listen")
                    .long("listen")
                    .default_value("127.0.0.1:8080")
                    .value_parser(clap::value_parser!(std::net::SocketAddr)),
            )
            .arg(
                Arg::new("retention_days")
                    .long("retention-days")
                    .default_value("30")
                    .value_parser(clap::value_parser!(u32)),
            )
            .arg(
                Arg::new("production")
                    .long("production")
                    .action(ArgAction::SetTrue),
            )
            .arg(
                Arg::new("trusted_proxies")
                    .long("trusted-proxy")
                    .action(ArgAction::Append),
            )
            .arg(
                Arg::new("attestation_roots")
                    .long("attestation-root")
                    .action(ArgAction::Append),
            )
            .arg(
                Arg::new("database")
                    .long("database")
                    .env("TESSERA_DATABASE_URL"),
            )
            .arg(Arg::new("config").long("config"))
    }

    fn apply(text: &str) -> Result<Command, ConfigFileError> {
        apply_text(serve(), Path::new("t.toml"), text)
    }

    #[test]
    fn file_values_become_defaults_and_flags_win() {
        let command = apply("listen = \"0.0.0.0:9000\"\nretention_days = 7\nproduction = true\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n").unwrap();
        let m = command.clone().try_get_matches_from(["serve"]).unwrap();
        assert_eq!(
            m.get_one::<std::net::SocketAddr>("listen").unwrap().port(),
            9000
        );
        assert_eq!(*m.get_one::<u32>("retention_days").unwrap(), 7);
        assert!(m.get_flag("production"));
        assert_eq!(m.get_many::<String>("trusted_proxies").unwrap().count(), 2);
        let m = command
            .try_get_matches_from(["serve", "--retention-days", "1"])
            .unwrap();
        assert_eq!(*m.get_one::<u32>("retention_days").unwrap(), 1);
    }

    #[test]
    fn unknown_keys_wrong_types_and_bad_values_are_named() {
        let e = apply("listn = \"x\"").unwrap_err().to_string();
        assert!(e.contains("unknown key `listn`"), "{e}");
        assert!(e.contains("see docs/operations.md"), "{e}");
        // A repeatable flag's name is not its setting's key: the error names the key.
        for (key, says) in [
            (
                "attestation_root",
                "--attestation-root is `attestation_roots` in the file",
            ),
            (
                "trusted_proxy",
                "--trusted-proxy is `trusted_proxies` in the file",
            ),
            // A variable's name is not always its setting's key either.
            (
                "database_url",
                "TESSERA_DATABASE_URL is `database` in the file",
            ),
        ] {
            let e = apply(&format!("{key} = [\"x\"]")).unwrap_err().to_string();
            assert!(e.contains(&format!("unknown key `{key}`")), "{e}");
            assert!(e.contains(says), "{e}");
        }
        let e = apply("config = \"other.toml\"").unwrap_err().to_string();
        assert!(e.contains("unknown key `config`"), "{e}");
        assert!(e.contains("see docs/operations.md"), "{e}");
        let e = apply("retention_days = \"many\"").unwrap_err().to_string();
        assert!(e.contains("key `retention_days`"), "{e}");
        assert!(!e.contains("many"), "the value is not repeated: {e}");
        let e = apply("listen = [\"a\"]").unwrap_err().to_string();
        assert!(e.contains("not an array"), "{e}");
        let e = apply("[listen]\nport = 1").unwrap_err().to_string();
        assert!(e.contains("key `listen`"), "{e}");
        let e = apply("listen = ").unwrap_err().to_string();
        assert!(e.contains("not valid TOML"), "{e}");
    }

    #[test]
    fn every_setting_gets_an_environment_variable() {
        let command = with_environment(serve());
        let env = |id: &str| {
            command
                .get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .map(|v| v.to_string_lossy().into_owned())
        };
        assert_eq!(
            env("retention_days").as_deref(),
            Some("TESSERA_RETENTION_DAYS")
        );
        assert_eq!(env("config"), None);
    }
}

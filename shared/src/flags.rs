//! How `up` hands its stage's flags to the instances it starts.
//!
//! A stage declares each flag once, as a clap attribute with an
//! environment fallback:
//!
//! ```text
//! /// How long a request waits for the database.
//! #[arg(long, env = "SHOP_DB_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
//! #[serde(serialize_with = "shop::flags::duration")]
//! db_timeout: Duration,
//! ```
//!
//! `stageN up --db-timeout 3s` parses it like any flag. To start an
//! instance, [`instance_env`] walks the stage's clap declaration and reads
//! every flag's current value back out of the parsed struct (through
//! serde, so the values a stage filled in itself, such as the URL of a
//! server it started, go along too), and sets each one's variable for the
//! instance. Nothing is listed twice, so nothing can be forgotten: a flag
//! without an environment fallback, or whose value does not serialise to
//! text, is an error when `up` starts, not a silently ignored setting.
//!
//! Why the environment and not the command line? Values such as a
//! database URL or a cookie secret would be on show in `ps` as arguments;
//! a process's environment is readable by its owner only.

use std::ffi::OsString;
use std::time::Duration;

use serde::Serializer;
use serde_json::Value;

/// Why a stage's flags cannot be handed on.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error(
        "the flag --{0} has no environment fallback (`env = \"…\"`), so `up` cannot hand it to its instances"
    )]
    NoEnv(String),
    #[error(
        "the flag --{0} does not serialise to text (a Duration needs `#[serde(serialize_with = \"shop::flags::duration\")]`)"
    )]
    NotText(String),
    #[error("the stage's flags do not serialise: {0}")]
    Serialise(#[from] serde_json::Error),
}

/// Serialises a [`Duration`] the way its flag is written (`1s`, `30m`),
/// for `#[serde(serialize_with = "shop::flags::duration")]`.
pub fn duration<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_duration(*value))
}

/// One flag and its value as text; `None` when it has no value.
struct Flag {
    long: String,
    env: Option<OsString>,
    hidden: bool,
    value: Option<String>,
}

fn flags<A: clap::Args + serde::Serialize>(args: &A) -> Result<Vec<Flag>, FlagError> {
    let values = serde_json::to_value(args)?;
    let command = A::augment_args(clap::Command::new("stage"));
    command
        .get_arguments()
        .map(|arg| {
            let id = arg.get_id().as_str();
            let long = arg.get_long().unwrap_or(id).to_owned();
            let value = match values.get(id) {
                None | Some(Value::Null) => None,
                Some(Value::String(text)) => Some(text.clone()),
                Some(Value::Bool(on)) => Some(on.to_string()),
                Some(Value::Number(number)) => Some(number.to_string()),
                Some(_) => return Err(FlagError::NotText(long)),
            };
            Ok(Flag {
                env: arg.get_env().map(ToOwned::to_owned),
                hidden: arg.is_hide_env_values_set(),
                long,
                value,
            })
        })
        .collect()
}

/// The environment that gives an instance the same flags as `args`: one
/// variable per flag that has a value.
pub fn instance_env<A: clap::Args + serde::Serialize>(
    args: &A,
) -> Result<Vec<(OsString, OsString)>, FlagError> {
    let mut env = Vec::new();
    for flag in flags(args)? {
        let name = flag
            .env
            .ok_or_else(|| FlagError::NoEnv(flag.long.clone()))?;
        if let Some(value) = flag.value {
            env.push((name, value.into()));
        }
    }
    Ok(env)
}

/// The flags as a command line would give them, for the log: `--ttl=30m
/// --secure-cookies=false --redis-url=<set>`. Values declared with
/// `hide_env_values` (secrets, URLs that may carry a password) are shown
/// as `<set>`.
pub fn describe<A: clap::Args + serde::Serialize>(args: &A) -> String {
    match flags(args) {
        Ok(flags) => flags
            .iter()
            .filter_map(|flag| {
                let value = flag.value.as_deref()?;
                let shown = if flag.hidden { "<set>" } else { value };
                Some(format!("--{}={shown}", flag.long))
            })
            .collect::<Vec<_>>()
            .join(" "),
        Err(error) => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Args, serde::Serialize)]
    struct Example {
        #[arg(long, env = "EX_URL", hide_env_values = true)]
        url: Option<String>,
        #[arg(long, env = "EX_TTL", default_value = "90s", value_parser = humantime::parse_duration)]
        #[serde(serialize_with = "duration")]
        ttl: Duration,
        #[arg(long, env = "EX_ON")]
        on: bool,
    }

    #[test]
    fn every_flag_goes_through_its_variable_and_secrets_stay_hidden() {
        let example = Example {
            url: Some("redis://:pw@host/".into()),
            ttl: Duration::from_secs(90),
            on: true,
        };
        let env = instance_env(&example).expect("env");
        assert_eq!(
            env,
            [
                ("EX_URL".into(), "redis://:pw@host/".into()),
                ("EX_TTL".into(), "1m 30s".into()),
                ("EX_ON".into(), "true".into()),
            ]
        );
        assert_eq!(describe(&example), "--url=<set> --ttl=1m 30s --on=true");
    }

    #[derive(clap::Args, serde::Serialize)]
    struct Forgotten {
        #[arg(long)]
        level: u8,
    }

    #[test]
    fn a_flag_without_a_variable_is_refused() {
        let refused = instance_env(&Forgotten { level: 3 });
        assert!(matches!(refused, Err(FlagError::NoEnv(flag)) if flag == "level"));
    }
}

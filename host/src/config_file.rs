//! `plugbus run --config FILE` (or `PLUGBUS_CONFIG`): the run flags as a
//! TOML file, one key per flag, named as the flag without its dashes
//! (`fsync = "always"`, `batch-events-max = 256`, or with underscores),
//! a list for a flag given several times (`ordering-for = ["a=strict"]`),
//! `true` for a switch (`memory = true`). A flag on the command line wins
//! over the file, and the file over the environment (`PLUGBUS_DATA`, …):
//! the file's keys become flags for those not given, and clap takes a
//! flag over its environment variable. An unknown key is refused with the
//! file and the key named, so a typo never silently does nothing.
//!
//! It owns reading the file and turning it into arguments; `cli` checks
//! them as it checks any flag.

use std::ffi::OsString;
use std::path::Path;

/// The flags of `plugbus run` that a file may set: (name, takes a value).
fn run_flags() -> Vec<(String, bool)> {
    use clap::CommandFactory;
    let cli = crate::cli::Cli::command();
    let Some(run) = cli.find_subcommand("run") else {
        return Vec::new();
    };
    run.get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?.to_string();
            let takes_value = a.get_action().takes_values();
            Some((long, takes_value))
        })
        .filter(|(long, _)| long != "config" && long != "help")
        .collect()
}

/// Where `args` (a `plugbus run` command line) says the file is: `--config
/// FILE`, `--config=FILE`, else `PLUGBUS_CONFIG`.
fn config_path(args: &[OsString]) -> Option<OsString> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--config" {
            return it.next().cloned();
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(v.into());
        }
    }
    std::env::var_os("PLUGBUS_CONFIG").filter(|v| !v.is_empty())
}

/// Whether `args` gives the flag `--long` itself.
fn given(args: &[OsString], long: &str) -> bool {
    let flag = format!("--{long}");
    let with_value = format!("--{long}=");
    args.iter().any(|a| {
        let s = a.to_string_lossy();
        s == flag || s.starts_with(&with_value)
    })
}

/// The flags `text` (the file at `path`) sets, as arguments.
pub fn arguments(path: &Path, text: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    let name = path.display();
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("config file {name}: not TOML: {e}"))?;
    let flags = run_flags();
    let mut out = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let Some((_, takes_value)) = flags.iter().find(|(f, _)| *f == long) else {
            let mut known: Vec<&str> = flags.iter().map(|(f, _)| f.as_str()).collect();
            known.sort_unstable();
            return Err(format!(
                "config file {name}: unknown key `{key}`; the keys are the flags of `plugbus run`: {}",
                known.join(", ")
            ));
        };
        let scalar = |v: &toml::Value| -> Result<String, String> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                toml::Value::Boolean(b) => Ok(b.to_string()),
                other => Err(format!(
                    "config file {name}: `{key}` is a {}, give a string, a number or a list of them",
                    other.type_str()
                )),
            }
        };
        let values = match (&value, takes_value) {
            (toml::Value::Boolean(true), false) => vec![],
            (toml::Value::Boolean(false), false) => continue,
            (_, false) => {
                return Err(format!(
                    "config file {name}: `{key}` is a switch: write `{key} = true` or leave it out"
                ))
            }
            (toml::Value::Array(items), true) => {
                items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?
            }
            (v, true) => vec![scalar(v)?],
        };
        out.push((long, values));
    }
    Ok(out)
}

/// `args` (the process's, program name first) with the config file's
/// flags added for a `plugbus run` that names one; other commands as they
/// are.
pub fn expand(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    if args.get(1).is_none_or(|a| a != "run") {
        return Ok(args);
    }
    let Some(path) = config_path(&args) else {
        return Ok(args);
    };
    let path = std::path::PathBuf::from(path);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("config file {}: cannot read it: {e}", path.display()))?;
    let mut out = args.clone();
    for (long, values) in arguments(&path, &text)? {
        if given(&args, &long) {
            continue;
        }
        if values.is_empty() {
            out.push(format!("--{long}").into());
        }
        for v in values {
            out.push(format!("--{long}={v}").into());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn run(args: &[&str], file: &str) -> Result<crate::run_settings::RunSettings, String> {
        let dir = std::env::temp_dir().join(format!("plugbus-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join(format!("{}.toml", args.len()));
        std::fs::write(&path, file).map_err(|e| e.to_string())?;
        let mut argv: Vec<OsString> = ["plugbus", "run", "--config"].map(OsString::from).to_vec();
        argv.push(path.clone().into());
        argv.extend(args.iter().map(OsString::from));
        let argv = expand(argv)?;
        let cli = crate::cli::Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        match cli.command {
            crate::cli::Command::Run(r) => r.settings(),
            _ => Err("not run".into()),
        }
    }

    #[test]
    fn a_file_sets_flags_the_command_line_wins_and_typos_are_named() {
        let file = r#"
            plugins = "/srv/plugins"
            data = "/var/lib/plugbus"
            fsync = "interval=1000"
            batch_events_max = 64
            ordering-for = ["inventory=strict"]
        "#;
        let s = run(&[], file).expect("parses");
        assert_eq!(s.data.as_deref(), Some(Path::new("/var/lib/plugbus")));
        assert_eq!(s.plugins, Path::new("/srv/plugins"));
        assert_eq!(s.delivery.batch_events_max, 64);
        // A flag given wins over the file.
        let s = run(&["--batch-events-max", "8"], file).expect("parses");
        assert_eq!(s.delivery.batch_events_max, 8);
        let s = run(&["--memory"], "plugins = \"/p\"\nmemory = true\n").expect("parses");
        assert!(s.data.is_none());
        let err = run(&[], "plugins = \"/p\"\nbatch-event-max = 3\n").expect_err("typo");
        assert!(
            err.contains("unknown key `batch-event-max`") && err.contains("batch-events-max"),
            "{err}"
        );
        let err = run(&[], "plugins = \"/p\"\nmemory = \"yes\"\n").expect_err("switch");
        assert!(err.contains("is a switch"), "{err}");
        let err = run(&[], "plugins = [").expect_err("not TOML");
        assert!(err.contains("not TOML"), "{err}");
    }
}

//! The authoring subcommands as the command line runs them: their flags,
//! and what each prints.

use std::io::Write;
use std::path::PathBuf;

use super::build::{self, BuildOptions};
use super::{fixtures, AuthorError, Lang, Project};

/// Flags of `plugbus new`.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The plugin's name: lowercase letters, digits, `-` and `_`. The
    /// project is written to ./NAME.
    pub name: String,
    /// The language of the project.
    #[arg(long, value_enum, default_value = "rust")]
    pub lang: Lang,
    /// Write the project into this directory instead of the current one.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
}

/// Flags of `plugbus build` and `plugbus test`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The project (default: the current directory).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Build the small, optimized plugin to deploy (slower to build).
    #[arg(long)]
    pub release: bool,
    /// Cargo's target directory (default: one shared by every project,
    /// ~/.cache/plugbus/plugin-target, so projects reuse each other's
    /// compiled dependencies).
    #[arg(long, value_name = "DIR", env = "PLUGBUS_PLUGIN_TARGET_DIR")]
    pub target_dir: Option<PathBuf>,
    /// The compile cache to fill (as given to `plugbus run`).
    #[arg(long, value_name = "DIR", env = "PLUGBUS_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

impl BuildArgs {
    fn options(&self) -> BuildOptions {
        BuildOptions {
            release: self.release,
            target_dir: self.target_dir.clone(),
            cache_dir: self.cache_dir.clone(),
            quiet: false,
        }
    }
}

/// Flags of `plugbus dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// The project (default: the current directory).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Where the host listens (default: a free port on 127.0.0.1).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Build the optimized plugin on every change (slower).
    #[arg(long)]
    pub release: bool,
    /// The compile cache the builds fill and the host starts them from.
    #[arg(long, value_name = "DIR", env = "PLUGBUS_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// `plugbus new`.
pub fn new(args: &NewArgs) -> Result<(), AuthorError> {
    let (dir, files) = super::new::create(&args.dir, &args.name, args.lang)?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "wrote {} ({} files)", dir.display(), files.len());
    let shown = dir.strip_prefix(".").unwrap_or(&dir).display().to_string();
    let test_hint = match args.lang {
        Lang::Rust => "src/lib.rs is the handler; tests/handler.rs tests it natively",
        Lang::Python => "app.py is the handler; test_app.py tests it natively",
    };
    let _ = writeln!(
        out,
        "{test_hint}; {}.toml is its manifest; events/sample.json is what `plugbus dev` and `plugbus test` publish\nnext:\n  cd {shown}\n  plugbus dev      # run it, rebuild on every change\n  plugbus test     # its tests, then the built plugin against events/\n  plugbus build --release   # dist/{}.wasm to deploy",
        args.name, args.name
    );
    Ok(())
}

/// `plugbus build`.
pub fn build(args: &BuildArgs) -> Result<(), AuthorError> {
    let project = Project::open(&args.dir)?;
    let mut out = std::io::stdout().lock();
    let built = build::build(&project, &args.options(), &mut out)?;
    report(&built, &mut out);
    Ok(())
}

fn report(built: &build::Built, out: &mut dyn Write) {
    let _ = writeln!(
        out,
        "built {} ({}) in {:.1} s; loads here, compiled for this host in {:.1} s\nsubscribes to {}",
        built.wasm.display(),
        build::size(built.bytes),
        built.build_time.as_secs_f64(),
        built.check_time.as_secs_f64(),
        built.subscriptions.join(", ")
    );
}

/// `plugbus test`: the project's own tests, then its fixtures through the
/// built plugin. Returns whether everything went as expected.
pub fn test(args: &BuildArgs) -> Result<bool, AuthorError> {
    let project = Project::open(&args.dir)?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "== {}'s own tests", project.name);
    super::native_tests(&project, args.target_dir.clone())?;
    let _ = writeln!(out, "== build");
    let built = build::build(&project, &args.options(), &mut out)?;
    report(&built, &mut out);
    let files = project.fixtures()?;
    let _ = writeln!(
        out,
        "== {} fixture file(s) through {}",
        files.len(),
        built.wasm.display()
    );
    let ran = fixtures::run(
        &project.name,
        &built.wasm,
        &built.manifest,
        args.cache_dir.clone(),
        fixtures::load(&files)?,
    )?;
    for r in &ran {
        fixtures::describe(r, &mut out);
    }
    let failed = ran.iter().filter(|r| r.unexpected.is_some()).count();
    let _ = writeln!(
        out,
        "{}: {} event(s), {failed} unexpected",
        if failed == 0 { "ok" } else { "FAILED" },
        ran.len()
    );
    Ok(failed == 0)
}

/// `plugbus dev`.
pub fn dev(args: &DevArgs) -> Result<(), AuthorError> {
    let project = Project::open(&args.dir)?;
    let opts = super::dev::DevOptions {
        listen: args.listen,
        release: args.release,
        cache_dir: args
            .cache_dir
            .clone()
            .or_else(crate::runtime::cache::default_dir),
    };
    match super::dev::dev(&project, &opts, &mut std::io::stdout()) {
        Err(AuthorError::Stopped) => Ok(()),
        other => other,
    }
}

//! What the command lines of all three binaries (`cafs-mount`, `cafsd`, `fsctl`) share, in one place so that
//! they read the same variables and print the same shapes (it lives in the helper's crate because every binary
//! links it): log output, and the manual pages the package installs (`--generate-man DIR`, hidden, writes one
//! page per command and subcommand from the same definitions `--help` prints).
//!
//! - `RUST_LOG` selects what is logged (tracing's `EnvFilter` syntax); each binary passes its own default.
//! - `--log-format` (or `CAFS_LOG_FORMAT`) selects how: `text` for a terminal or a file, `json` (one object per
//!   line) for log shippers, `journal` for systemd's journal, and `auto` (the default), which is `journal` when
//!   standard error is a journal stream (systemd sets `$JOURNAL_STREAM` to its device and inode) and `text`
//!   otherwise. The journal shape leaves out the time (the journal stamps every line) and starts each line with
//!   its syslog priority (`<3>` for errors … `<7>` for traces), so that `journalctl -p warning` selects by
//!   level.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are printed on standard error.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `journal` when standard error is systemd's journal, else `text`.
    #[default]
    Auto,
    /// Human-readable lines with a timestamp (coloured on a terminal).
    Text,
    /// One JSON object per line: timestamp, level, target, message and fields.
    Json,
    /// For systemd's journal: a syslog priority prefix, no timestamp, no colour.
    Journal,
}

/// The options every binary takes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CommonArgs {
    /// Log line format on standard error (what is logged: RUST_LOG)
    #[arg(long, value_enum, env = "CAFS_LOG_FORMAT", default_value_t = LogFormat::Auto, global = true)]
    pub log_format: LogFormat,
    /// Write the manual pages (roff) into DIR and exit
    #[arg(long, value_name = "DIR", hide = true, exclusive = true)]
    pub generate_man: Option<PathBuf>,
}

impl CommonArgs {
    /// When `--generate-man DIR` was given: writes `NAME.1` (and `NAME-SUB.1` per subcommand) for `cmd` into
    /// DIR and returns how the program should exit (a failure is reported on standard error); None otherwise.
    pub fn generate_man(&self, cmd: clap::Command) -> Option<std::process::ExitCode> {
        let dir = self.generate_man.as_ref()?;
        let name = cmd.get_name().to_string();
        let written = std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(cmd, dir));
        Some(match written {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{name}: --generate-man {}: {e}", dir.display());
                std::process::ExitCode::FAILURE
            }
        })
    }
}

/// Whether standard error is the stream systemd's journal gave this process: `$JOURNAL_STREAM` holds the
/// stream's `DEVICE:INODE`, which a child with redirected stderr inherits but no longer matches.
fn stderr_is_journal() -> bool {
    let Some(expected) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else { return false };
    expected.to_str().is_some_and(|e| e == format!("{}:{}", meta.dev(), meta.ino()))
}

impl LogFormat {
    /// `Auto` decided for this process.
    pub fn resolve(self) -> LogFormat {
        match self {
            LogFormat::Auto if stderr_is_journal() => LogFormat::Journal,
            LogFormat::Auto => LogFormat::Text,
            other => other,
        }
    }
}

/// Installs the global subscriber: `RUST_LOG` when set (and valid), else `default_filter`, in `args`'s format.
pub fn init_logging(args: &CommonArgs, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match args.log_format.resolve() {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
        LogFormat::Journal => builder.with_ansi(false).event_format(JournalLine::new()).init(),
        LogFormat::Text | LogFormat::Auto => {
            builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init()
        }
    }
}

/// The syslog priority the journal reads from a `<N>` line prefix.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// A line for the journal: the priority prefix, then tracing's usual line without its time.
struct JournalLine {
    inner: format::Format<format::Full, ()>,
}

impl JournalLine {
    fn new() -> Self {
        JournalLine { inner: format::format().without_time().with_ansi(false) }
    }
}

impl<S, N> FormatEvent<S, N> for JournalLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.inner.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_priorities_follow_syslog() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::TRACE), 7);
    }

    #[test]
    fn auto_is_text_without_a_journal_stream() {
        // The test runner's stderr is never the stream a (possibly set) JOURNAL_STREAM names with a made-up inode.
        assert_eq!(LogFormat::Text.resolve(), LogFormat::Text);
        assert_eq!(LogFormat::Json.resolve(), LogFormat::Json);
        assert_ne!(LogFormat::Auto.resolve(), LogFormat::Auto);
    }
}

//! Rendering a build's progress on standard error.
//!
//! On a terminal, [`Progress`] keeps one status line at the bottom,
//! redrawn in place: `[done/running/remaining] building a, b …`, cut to
//! the terminal's width. What must stay readable (failures with the last
//! lines of their logs, and with `-L` every log line) is printed above
//! it. Anywhere else it writes plain lines (`building X`, `built X`,
//! `failed X: …`), which read well in a CI log. Standard output is left
//! to the command's results.

use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bigtop_core::{StoreDir, StorePath};
use bigtop_store::build::{Activity, BuildFailure, BuildObserver, FailureKind, Plan};
use bigtop_store::cache::CopyObserver;

/// How often the status line is redrawn at most: builtin builds finish by
/// the thousand per second, and a terminal need not see each.
const REDRAW_EVERY: Duration = Duration::from_millis(50);

/// A [`BuildObserver`] that renders on standard error.
#[derive(Debug)]
pub struct Progress {
    dir: StoreDir,
    /// The terminal's width, if standard error is a terminal.
    width: Option<usize>,
    logs: bool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Jobs started and not yet over, in the order they started.
    running: Vec<(StorePath, Activity)>,
    counts: (usize, usize, usize),
    /// Whether a status line is on screen (and must be erased first).
    shown: bool,
    last_draw: Option<Instant>,
}

impl Progress {
    /// A renderer for this process's standard error; with `logs`, every
    /// line of every build's log is shown, prefixed by its name.
    pub fn stderr(dir: StoreDir, logs: bool) -> Self {
        let width = io::stderr().is_terminal().then(terminal_width);
        Progress {
            dir,
            width,
            logs,
            state: Mutex::new(State::default()),
        }
    }

    /// Erases the status line; call before printing results.
    pub fn finish(&self) {
        let mut state = self.lock();
        if state.shown {
            let _ = io::stderr().lock().write_all(b"\r\x1b[K");
            state.shown = false;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Prints `text` (whole lines) above the status line, then redraws it.
    fn print(&self, state: &mut State, text: &str) {
        let mut buf = String::new();
        if state.shown {
            buf.push_str("\r\x1b[K");
            state.shown = false;
        }
        buf.push_str(text);
        if !text.ends_with('\n') {
            buf.push('\n');
        }
        // Progress is best effort: a closed stderr must not fail a build.
        let _ = io::stderr().lock().write_all(buf.as_bytes());
        self.redraw(state, true);
    }

    fn redraw(&self, state: &mut State, force: bool) {
        let Some(width) = self.width else {
            return;
        };
        let now = Instant::now();
        if !force && state.last_draw.is_some_and(|t| now - t < REDRAW_EVERY) {
            return;
        }
        state.last_draw = Some(now);
        let line = status_line(&state.running, state.counts, width);
        let _ = io::stderr()
            .lock()
            .write_all(format!("\r\x1b[K{line}").as_bytes());
        state.shown = true;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The derivation's name, without `.drv`.
fn short(path: &StorePath) -> &str {
    path.name().strip_suffix(".drv").unwrap_or(path.name())
}

/// `[done/running/remaining] building a, b; fetching c`, at most `width`
/// characters (one less, so that the cursor never wraps).
fn status_line(
    running: &[(StorePath, Activity)],
    counts: (usize, usize, usize),
    width: usize,
) -> String {
    let (done, active, left) = counts;
    let mut line = format!("[{done}/{active}/{left}]");
    for (verb, kinds) in [
        ("building", &[Activity::Build, Activity::Builtin][..]),
        ("checking", &[Activity::Check][..]),
        ("fetching", &[Activity::Fetch][..]),
        ("downloading", &[Activity::Download][..]),
    ] {
        let names: Vec<&str> = running
            .iter()
            .filter(|(_, a)| kinds.contains(a))
            .map(|(p, _)| short(p))
            .collect();
        if !names.is_empty() {
            let sep = if line.ends_with(']') { " " } else { "; " };
            let _ = write!(line, "{sep}{verb} {}", names.join(", "));
        }
    }
    truncate(&line, width.saturating_sub(1).max(10))
}

/// `text` cut to `max` characters, ending in `…` where it was cut.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

/// A [`CopyObserver`] that draws a bar on standard error while closures
/// are copied: paths and bytes done of all, redrawn in place at most
/// every 50 ms. Draws nothing when standard error is not a
/// terminal (the command's summary says what was done).
#[derive(Debug)]
pub struct CopyBar {
    width: Option<usize>,
    paths: AtomicUsize,
    bytes: AtomicU64,
    total: Mutex<(usize, u64)>,
    last_draw: Mutex<Option<Instant>>,
}

impl CopyBar {
    /// A bar for this process's standard error.
    pub fn stderr() -> Self {
        CopyBar {
            width: io::stderr().is_terminal().then(terminal_width),
            paths: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            total: Mutex::new((0, 0)),
            last_draw: Mutex::new(None),
        }
    }

    /// Erases the bar; call before printing results.
    pub fn finish(&self) {
        if self.width.is_some() && self.last_draw.lock().is_ok_and(|l| l.is_some()) {
            let _ = io::stderr().lock().write_all(b"\r\x1b[K");
        }
    }

    fn draw(&self, force: bool) {
        let Some(width) = self.width else { return };
        let mut last = self.last_draw.lock().unwrap_or_else(|e| e.into_inner());
        if !force && last.is_some_and(|t| t.elapsed() < REDRAW_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let total = *self.total.lock().unwrap_or_else(|e| e.into_inner());
        let line = copy_line(
            (self.paths.load(Ordering::Relaxed), total.0),
            (self.bytes.load(Ordering::Relaxed), total.1),
            width,
        );
        let _ = write!(io::stderr().lock(), "\r\x1b[K{line}");
    }
}

impl CopyObserver for CopyBar {
    fn planned(&self, paths: usize, nar_bytes: u64) {
        *self.total.lock().unwrap_or_else(|e| e.into_inner()) = (paths, nar_bytes);
        self.draw(true);
    }

    fn bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        self.draw(false);
    }

    fn copied(&self, _path: &StorePath) {
        let done = self.paths.fetch_add(1, Ordering::Relaxed) + 1;
        // The last one is always shown: the bar ends full.
        let all = self.total.lock().unwrap_or_else(|e| e.into_inner()).0;
        self.draw(done == all);
    }
}

/// `[3/10 paths] 1.5/20.0 MiB [###.......]`, the bar filling what is left
/// of `width` (bytes past the total, from a retried path, show as full).
fn copy_line(paths: (usize, usize), bytes: (u64, u64), width: usize) -> String {
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    let text = format!(
        "[{}/{} paths] {:.1}/{:.1} MiB",
        paths.0,
        paths.1,
        mib(bytes.0.min(bytes.1)),
        mib(bytes.1)
    );
    let room = width.saturating_sub(text.chars().count() + 4).min(40);
    if room < 5 {
        return truncate(&text, width.saturating_sub(1));
    }
    let filled = if bytes.1 == 0 {
        room
    } else {
        (room as u128 * u128::from(bytes.0.min(bytes.1)) / u128::from(bytes.1)) as usize
    };
    format!(
        "{text} [{}{}]",
        "#".repeat(filled),
        ".".repeat(room - filled)
    )
}

/// The width of the terminal on standard error: from the terminal, else
/// `$COLUMNS`, else 80.
fn terminal_width() -> usize {
    rustix::termios::tcgetwinsize(io::stderr())
        .ok()
        .map(|w| usize::from(w.ws_col))
        .filter(|&w| w > 0)
        .or_else(|| {
            std::env::var("COLUMNS")
                .ok()
                .and_then(|c| c.parse().ok())
                .filter(|&w| w > 0)
        })
        .unwrap_or(80)
}

/// Why a job failed, without the path (which the line already names)
/// and without its log tail (shown apart), but every line of it: a hash
/// mismatch gives both hashes on lines of their own.
pub(crate) fn reason(failure: &BuildFailure) -> String {
    match &failure.kind {
        FailureKind::Exited(status) => format!("builder failed with {status}"),
        FailureKind::OutputMissing(o) => format!("builder did not produce output `{o}`"),
        // The others name the path in their own words.
        _ => failure.message().to_string(),
    }
}

impl BuildObserver for Progress {
    fn planned(&self, plan: &Plan) {
        if !plan.is_empty() {
            let mut state = self.lock();
            state.counts = (0, 0, plan.jobs.len());
            self.print(&mut state, &plan.to_string());
        }
    }

    fn started(&self, path: &StorePath, what: Activity) {
        let mut state = self.lock();
        state.running.push((path.clone(), what));
        if self.width.is_some() {
            self.redraw(&mut state, false);
        } else {
            let (verb, _) = verbs(what);
            self.print(&mut state, &format!("{verb} {}", self.dir.display(path)));
        }
    }

    fn log_line(&self, drv: &StorePath, line: &str) {
        if self.logs {
            let mut state = self.lock();
            self.print(&mut state, &format!("{}> {line}", short(drv)));
        }
    }

    fn finished(&self, path: &StorePath, _outputs: &[StorePath]) {
        let mut state = self.lock();
        // A job can finish without starting: another process built it
        // while this one waited for its locks. Say nothing of those.
        let Some(at) = state.running.iter().position(|(p, _)| p == path) else {
            return;
        };
        let (_, what) = state.running.remove(at);
        if self.width.is_some() {
            self.redraw(&mut state, false);
        } else {
            let (_, verb) = verbs(what);
            self.print(&mut state, &format!("{verb} {}", self.dir.display(path)));
        }
    }

    fn failed(&self, failure: &BuildFailure) {
        let mut state = self.lock();
        state.running.retain(|(p, _)| p != &failure.path);
        let mut text = format!(
            "failed {}: {}",
            self.dir.display(&failure.path),
            reason(failure)
        );
        // With -L the log has just been shown in full.
        if !self.logs && !failure.log_tail.is_empty() {
            let _ = write!(text, "\nlast {} log lines:", failure.log_tail.len());
            for l in &failure.log_tail {
                let _ = write!(text, "\n  > {l}");
            }
        }
        self.print(&mut state, &text);
    }

    fn fell_back(&self, path: &StorePath) {
        let mut state = self.lock();
        let text = format!(
            "fetching {} failed: trying another substituter, or building it from its derivation",
            self.dir.display(path)
        );
        self.print(&mut state, &text);
    }

    fn progress(&self, done: usize, running: usize, remaining: usize) {
        let mut state = self.lock();
        state.counts = (done, running, remaining);
        self.redraw(&mut state, false);
    }
}

/// What a job of each kind is doing, and has done, in plain lines.
fn verbs(what: Activity) -> (&'static str, &'static str) {
    match what {
        Activity::Fetch => ("fetching", "fetched"),
        Activity::Download => ("downloading", "downloaded"),
        Activity::Check => ("checking", "checked"),
        _ => ("building", "built"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drv(name: &str) -> StorePath {
        format!("00000000000000000000000000000000-{name}.drv")
            .parse()
            .expect("a valid base name")
    }

    #[test]
    fn the_status_line_names_running_jobs_by_kind() {
        let running = [
            (drv("a"), Activity::Build),
            (drv("b"), Activity::Builtin),
            (drv("c"), Activity::Fetch),
        ];
        assert_eq!(
            status_line(&running, (3, 3, 10), 80),
            "[3/3/10] building a, b; fetching c"
        );
        assert_eq!(status_line(&[], (0, 0, 0), 80), "[0/0/0]");
    }

    #[test]
    fn the_copy_line_shows_paths_bytes_and_a_bar_that_fits() {
        assert_eq!(
            copy_line((3, 10), (1 << 20, 4 << 20), 60),
            "[3/10 paths] 1.0/4.0 MiB [########........................]"
        );
        assert_eq!(copy_line((3, 10), (1, 2), 60).chars().count(), 59);
        // A retried path counts its bytes twice: never past full.
        assert!(copy_line((1, 1), (9, 4), 60).ends_with("#]"));
        assert_eq!(copy_line((0, 0), (0, 0), 20), "[0/0 paths] 0.0/0.…");
    }

    #[test]
    fn the_status_line_fits_the_terminal_without_wrapping() {
        let running: Vec<_> = (0..40)
            .map(|i| (drv(&format!("package-{i}")), Activity::Build))
            .collect();
        let line = status_line(&running, (1, 40, 2), 60);
        assert_eq!(line.chars().count(), 59);
        assert!(line.ends_with('…'), "{line}");
        // Cut on a character boundary, never inside one.
        assert_eq!(truncate("ééééé", 3), "éé…");
    }
}

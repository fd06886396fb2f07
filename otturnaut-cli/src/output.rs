//! Where output goes. Human mode writes to stderr: one line per finished step,
//! a spinner for the running ones when stderr is a terminal, colour unless
//! `NO_COLOR` is set or stderr is not a terminal. JSON mode writes
//! newline-delimited JSON to stdout and keeps stderr for what only a person
//! needs (such as waiting for a lock).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use otturnaut_core::{DeployEvent, Step};
use serde::Serialize;

/// ANSI styling, or none.
#[derive(Debug, Clone, Copy)]
pub struct Paint {
    on: bool,
}

impl Paint {
    fn wrap(self, code: &str, s: &str) -> String {
        if self.on { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_owned() }
    }
    pub fn dim(self, s: &str) -> String {
        self.wrap("2", s)
    }
    pub fn bold(self, s: &str) -> String {
        self.wrap("1", s)
    }
    pub fn green(self, s: &str) -> String {
        self.wrap("32", s)
    }
    pub fn red(self, s: &str) -> String {
        self.wrap("31", s)
    }
    pub fn yellow(self, s: &str) -> String {
        self.wrap("33", s)
    }
}

/// `0.3s`, `12.4s`, `2m05s`.
pub fn elapsed(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 60_000 { format!("{:.1}s", d.as_secs_f64()) } else { format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60) }
}

/// How many characters of a build log line fit on the spinner's line.
const SPINNER_LINE: usize = 70;

#[derive(Debug)]
pub struct Out {
    json: bool,
    tty: bool,
    pub paint: Paint,
    spinner: Option<ProgressBar>,
    /// Steps started and not yet finished (fetch and build run beside load_state).
    running: Vec<Step>,
    activity: String,
}

impl Out {
    pub fn new(json: bool) -> Out {
        let tty = std::io::stderr().is_terminal();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
            || std::env::var("TERM").is_ok_and(|t| t == "dumb");
        Out {
            json,
            tty,
            paint: Paint { on: tty && !no_color },
            spinner: None,
            running: Vec::new(),
            activity: String::new(),
        }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    /// A line for a person, on stderr (printed above the spinner, if any).
    pub fn say(&self, line: impl AsRef<str>) {
        let line = line.as_ref();
        match &self.spinner {
            Some(spinner) => spinner.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// A line for a person in human mode only.
    pub fn human(&self, line: impl AsRef<str>) {
        if !self.json {
            self.say(line);
        }
    }

    /// One JSON value as a line on stdout.
    pub fn json_line(&self, value: &impl Serialize) {
        let text = serde_json::to_string(value).unwrap_or_else(|e| format!(r#"{{"error":"serialising output: {e}"}}"#));
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{text}");
        let _ = stdout.flush();
    }

    /// Starts the spinner (human mode on a terminal only).
    pub fn start_spinner(&mut self) {
        if self.json || !self.tty || self.spinner.is_some() {
            return;
        }
        let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("  {spinner} {msg} {elapsed:.dim}") {
            spinner.set_style(style.tick_strings(&["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏", "·"]));
        }
        spinner.enable_steady_tick(Duration::from_millis(100));
        self.spinner = Some(spinner);
    }

    pub fn stop_spinner(&mut self) {
        if let Some(spinner) = self.spinner.take() {
            spinner.finish_and_clear();
        }
    }

    fn refresh(&self) {
        if let Some(spinner) = &self.spinner {
            let steps: Vec<&str> = self.running.iter().map(|s| s.name()).collect();
            let mut msg = steps.join(" + ");
            if !self.activity.is_empty() {
                msg = format!("{msg} {}", self.paint.dim(&self.activity));
            }
            spinner.set_message(msg);
        }
    }

    /// The steps started and not yet finished, e.g. `health_check`.
    pub fn running_steps(&self) -> String {
        self.running.iter().map(|s| s.name()).collect::<Vec<_>>().join(" + ")
    }

    /// Shows a deploy event: as JSON, or as a person reads it.
    pub fn event(&mut self, event: &DeployEvent) {
        match event {
            DeployEvent::StepStarted { step } => self.running.push(*step),
            DeployEvent::StepFinished { step, .. } | DeployEvent::StepFailed { step, .. } => {
                self.running.retain(|s| s != step)
            }
            _ => {}
        }
        if self.json {
            self.json_line(event);
            return;
        }
        let p = self.paint;
        match event {
            DeployEvent::Started { app, deployment } => {
                self.say(format!("{} {app} {}", p.bold("deploying"), p.dim(&format!("(deployment {deployment})"))));
            }
            DeployEvent::StepStarted { .. } => {
                self.activity.clear();
                self.refresh();
            }
            DeployEvent::StepFinished { step, elapsed_ms, detail } => {
                self.activity.clear();
                let detail = detail.as_deref().map(|d| format!("  {}", p.dim(d))).unwrap_or_default();
                self.say(format!(
                    "  {} {:<16} {:>7}{detail}",
                    p.green("✓"),
                    step.name(),
                    elapsed(Duration::from_millis(*elapsed_ms))
                ));
                self.refresh();
            }
            DeployEvent::StepFailed { step, elapsed_ms, error } => {
                self.activity.clear();
                let first = error.lines().next().unwrap_or_default();
                self.say(format!(
                    "  {} {:<16} {:>7}  {}",
                    p.red("✗"),
                    step.name(),
                    elapsed(Duration::from_millis(*elapsed_ms)),
                    p.red(first)
                ));
                self.refresh();
            }
            DeployEvent::BuildLog { line } => {
                let line = line.trim_end();
                if is_build_noise(line) {
                    return;
                }
                if self.spinner.is_some() {
                    // On a terminal only the latest line shows, on the spinner's line;
                    // a failed build's error carries the last lines anyway.
                    self.activity = line.chars().take(SPINNER_LINE).collect();
                    self.refresh();
                } else {
                    self.say(p.dim(&format!("      │ {line}")));
                }
            }
            DeployEvent::UndoStarted { resource } => {
                self.activity = format!("undo: {resource}");
                self.refresh();
            }
            DeployEvent::UndoFinished { resource, ok: true, .. } => {
                self.activity.clear();
                self.say(format!("  {} undone: {resource}", p.yellow("↺")));
                self.refresh();
            }
            DeployEvent::UndoFinished { resource, ok: false, attempts, error } => {
                self.activity.clear();
                let why = error.as_deref().unwrap_or("unknown error");
                self.say(format!("  {} could not {resource} ({attempts} attempt(s)): {why}", p.red("✗")));
                self.refresh();
            }
            DeployEvent::Warning { message } => {
                self.say(format!("  {} {message}", p.yellow("!")));
            }
        }
    }
}

/// Build output a person does not need: the legacy builder's bookkeeping
/// between steps, and the label steps Otturnaut itself adds.
fn is_build_noise(line: &str) -> bool {
    let trimmed = line.trim();
    trimmed.is_empty()
        || trimmed.starts_with("---> ")
        || trimmed == "--->"
        || trimmed.starts_with("Removing intermediate container")
        || (trimmed.starts_with("Step ") && trimmed.contains(": LABEL otturnaut."))
}

impl Drop for Out {
    fn drop(&mut self) {
        self.stop_spinner();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(elapsed(Duration::from_millis(340)), "0.3s");
        assert_eq!(elapsed(Duration::from_millis(12_400)), "12.4s");
        assert_eq!(elapsed(Duration::from_secs(125)), "2m05s");
    }

    #[test]
    fn build_bookkeeping_is_left_out() {
        for noise in
            [" ---> Running in 7ebfe002a655", " ---> d0b03849eb56", " --->", "Removing intermediate container 7e", ""]
        {
            assert!(is_build_noise(noise), "{noise:?}");
        }
        assert!(is_build_noise("Step 6/11 : LABEL otturnaut.app=hello"));
        for kept in ["Step 2/11 : COPY busybox /bin/busybox", "about to fail", "Successfully built 007b09b1791e"] {
            assert!(!is_build_noise(kept), "{kept:?}");
        }
    }

    #[test]
    fn paint_off_adds_nothing() {
        let p = Paint { on: false };
        assert_eq!(p.red("x"), "x");
        assert_eq!(Paint { on: true }.red("x"), "\x1b[31mx\x1b[0m");
    }
}

//! Progress while a scenario runs: a bar with rate and ETA on stderr, or nothing in quiet mode
//! (CI), where the scenario prints one summary line at the end instead.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar's layout: phase, elapsed, bar, position, rate, ETA, message.
const TEMPLATE: &str = "{prefix:>10.bold} [{elapsed_precise}] [{bar:36.cyan/blue}] {pos}/{len} {unit} ({per_sec}, ETA {eta}) {msg}";

/// Progress of one phase of a scenario, counted in steps.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar for `len` steps of `unit` (for example "events"); hidden when `quiet`, and by
    /// indicatif when stderr is not a terminal.
    pub fn new(phase: &str, len: u64, unit: &str, quiet: bool) -> Self {
        if quiet {
            return Self {
                bar: ProgressBar::hidden(),
            };
        }
        let template = TEMPLATE.replace("{unit}", unit);
        let style = match ProgressStyle::with_template(&template) {
            Ok(style) => style.progress_chars("=> "),
            // The template is a constant that the unit test renders; keep going without it.
            Err(_) => ProgressStyle::default_bar(),
        };
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
            .with_style(style)
            .with_prefix(phase.to_owned());
        bar.enable_steady_tick(Duration::from_millis(250));
        Self { bar }
    }

    /// One step done.
    pub fn step(&self) {
        self.bar.inc(1);
    }

    /// Sets the number of steps done.
    pub fn set_position(&self, done: u64) {
        self.bar.set_position(done);
    }

    /// Sets the number of steps in all.
    pub fn set_length(&self, len: u64) {
        self.bar.set_length(len);
    }

    /// Sets the message shown after the ETA.
    pub fn message(&self, msg: impl Into<String>) {
        self.bar.set_message(msg.into());
    }

    /// Clears the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_is_valid() {
        assert!(ProgressStyle::with_template(&TEMPLATE.replace("{unit}", "events")).is_ok());
    }

    #[test]
    fn quiet_is_hidden() {
        let p = Progress::new("simulate", 3, "events", true);
        assert!(p.bar.is_hidden());
        p.step();
        p.message("x");
        p.finish();
    }
}

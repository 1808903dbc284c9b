//! Rise and fall: how consecutive check results turn into up and down. Pure.

use super::Health;

/// The results in a row of one backend's checks.
#[derive(Debug, Clone, Default)]
pub struct Streak {
    successes: u32,
    failures: u32,
}

impl Streak {
    /// Folds one result into `state` (`failure` is None for a success, else what failed)
    /// and returns the new state when it changes: down after `fall` failures in a row, up
    /// after `rise` successes in a row.
    pub fn observe(
        &mut self,
        state: &Health,
        failure: Option<&str>,
        rise: u32,
        fall: u32,
    ) -> Option<Health> {
        match failure {
            None => {
                self.successes = self.successes.saturating_add(1);
                self.failures = 0;
            }
            Some(_) => {
                self.failures = self.failures.saturating_add(1);
                self.successes = 0;
            }
        }
        match (state, failure) {
            (Health::Starting | Health::Up, Some(why)) if self.failures >= fall => {
                Some(Health::Down(why.to_string()))
            }
            (Health::Starting | Health::Down(_), None) if self.successes >= rise => {
                Some(Health::Up)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The states after each result of `results` ('+' success, '-' failure).
    fn run(results: &str, rise: u32, fall: u32) -> Vec<&'static str> {
        let mut state = Health::Starting;
        let mut streak = Streak::default();
        results
            .chars()
            .map(|c| {
                let failure = (c == '-').then_some("refused");
                if let Some(new) = streak.observe(&state, failure, rise, fall) {
                    state = new;
                }
                state.label()
            })
            .collect()
    }

    #[test]
    fn down_after_fall_failures_in_a_row_up_after_rise_successes() {
        assert_eq!(
            run("--+---++-+++", 2, 3),
            [
                "starting", "starting", "starting", "starting", "starting", "down", "down", "up",
                "up", "up", "up", "up"
            ]
        );
        // Down, then up only after two successes in a row.
        assert_eq!(
            run("---+-++", 2, 3),
            ["starting", "starting", "down", "down", "down", "down", "up"]
        );
        // Up, and one failure short of fall does not take it down.
        assert_eq!(run("++--+", 2, 3), ["starting", "up", "up", "up", "up"]);
    }

    #[test]
    fn rise_and_fall_of_one_act_at_once() {
        assert_eq!(run("-+-", 1, 1), ["down", "up", "down"]);
    }

    #[test]
    fn the_failure_that_completes_fall_is_the_reason() {
        let mut s = Streak::default();
        assert_eq!(s.observe(&Health::Up, Some("a"), 1, 2), None);
        assert_eq!(
            s.observe(&Health::Up, Some("timed out"), 1, 2),
            Some(Health::Down("timed out".into()))
        );
    }
}

//! Stop strings for streamed generation: text is released as soon as it cannot be the start
//! of a stop string, and generation ends at the first stop string, which is not emitted.

/// What [`StopMatcher::push`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopStep {
    /// No stop string yet: emit this text (possibly empty while a partial match is held).
    Emit(String),
    /// Stop string `stop` (an index into the list) appeared: emit `text`, the output before
    /// it, and end generation.
    Stopped {
        /// The text before the stop string, not emitted earlier.
        text: String,
        /// Which stop string matched.
        stop: usize,
    },
}

/// Watches generated text for any of a set of stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    /// A matcher for `stops`. Empty stop strings are an error (they would match at once).
    pub fn new(stops: Vec<String>) -> Result<Self, String> {
        if stops.iter().any(String::is_empty) {
            return Err("a stop string must not be empty".into());
        }
        Ok(StopMatcher {
            stops,
            held: String::new(),
        })
    }

    /// The stop strings.
    pub fn stops(&self) -> &[String] {
        &self.stops
    }

    /// Adds the next piece of generated text. A stop string found anywhere in the text not
    /// yet emitted (it may span pieces) ends generation; otherwise everything except a tail
    /// that could still begin a stop string is released.
    pub fn push(&mut self, piece: &str) -> StopStep {
        self.held.push_str(piece);
        let first = self
            .stops
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.held.find(s.as_str()).map(|at| (at, i)))
            .min();
        if let Some((at, stop)) = first {
            let text = self.held[..at].to_string();
            self.held.clear();
            return StopStep::Stopped { text, stop };
        }
        let keep = self.partial_match_len();
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        StopStep::Emit(out)
    }

    /// Ends the stream without a stop: the text still held back.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// The length of the longest tail of the held text that is a proper prefix of a stop
    /// string (at a character boundary).
    fn partial_match_len(&self) -> usize {
        let h = self.held.as_bytes();
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        (1..longest.min(h.len() + 1))
            .rev()
            .find(|&n| {
                let start = h.len() - n;
                self.held.is_char_boundary(start)
                    && self
                        .stops
                        .iter()
                        .any(|s| s.len() > n && s.as_bytes().starts_with(&h[start..]))
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces`; returns everything emitted and the stop index, if any.
    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<usize>) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect()).unwrap();
        let mut out = String::new();
        for p in pieces {
            match m.push(p) {
                StopStep::Emit(t) => out.push_str(&t),
                StopStep::Stopped { text, stop } => {
                    out.push_str(&text);
                    return (out, Some(stop));
                }
            }
        }
        out.push_str(&m.finish());
        (out, None)
    }

    #[test]
    fn no_stop_passes_everything_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), None));
        assert_eq!(run(&["xyz"], &["a", "x", "y", "b"]), ("axyb".into(), None));
    }

    #[test]
    fn stop_spanning_pieces_is_cut_out() {
        assert_eq!(
            run(&["\n\n"], &["Hello", "\n", "\nmore"]),
            ("Hello".into(), Some(0))
        );
        assert_eq!(
            run(&["END", "stop"], &["abc s", "to", "pEND"]),
            ("abc ".into(), Some(1))
        );
    }

    #[test]
    fn earliest_stop_wins() {
        assert_eq!(run(&["b", "a"], &["xab"]), ("x".into(), Some(1)));
    }

    #[test]
    fn partial_match_is_held_then_released() {
        let mut m = StopMatcher::new(vec!["</s>".into()]).unwrap();
        assert_eq!(m.push("hi <"), StopStep::Emit("hi ".into()));
        assert_eq!(m.push("/"), StopStep::Emit(String::new()));
        assert_eq!(m.push("x"), StopStep::Emit("</x".into()));
        assert_eq!(m.push("é</"), StopStep::Emit("é".into()));
        assert_eq!(m.finish(), "</");
    }

    #[test]
    fn empty_stop_is_an_error() {
        assert!(StopMatcher::new(vec!["".into()]).is_err());
    }
}

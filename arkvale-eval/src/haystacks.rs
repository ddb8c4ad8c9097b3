//! The real-prose haystacks built into the library (public-domain novels; provenance, license
//! and the recipe that regenerates them in `arkvale-eval/data/haystack/README.md`).
//!
//! Passkey and NIAH prompts hide their needles in one of these by default: a result that holds
//! on the repetitive built-in filler ([`crate::passkey::FILLER`]) need not hold on real text,
//! where every page's keys differ.

/// Jane Austen, *Persuasion* (1818), the whole novel (~108k words-ish tokens): the default.
pub const PERSUASION: &str = include_str!("../data/haystack/persuasion.txt");
/// Herman Melville, *Moby-Dick* (1851), chapters 1–35.
pub const MOBY_DICK: &str = include_str!("../data/haystack/moby_dick.txt");

/// The names of the built-in haystacks, `filler` included, as the CLI accepts them.
pub const NAMES: [&str; 3] = ["persuasion", "moby-dick", "filler"];

/// The text of a built-in real-prose haystack by name (`None` for `filler` or an unknown
/// name).
pub fn by_name(name: &str) -> Option<&'static str> {
    match name {
        "persuasion" => Some(PERSUASION),
        "moby-dick" => Some(MOBY_DICK),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_haystacks_are_long_prose() {
        for name in ["persuasion", "moby-dick"] {
            let text = by_name(name).unwrap();
            assert!(text.len() > 300_000, "{name}: {} bytes", text.len());
            let words = text.split_whitespace().count();
            assert!(words > 50_000, "{name}: {words} words");
            // Prose: mostly letters and spaces, sentences end with periods.
            assert!(text.matches(". ").count() > 1000, "{name}");
        }
        assert!(by_name("filler").is_none());
    }
}

//! Text a device shows a person: what may be in it.
//!
//! A signature binds the bytes, but a person reads glyphs. Control characters (C0, C1),
//! bidirectional embeddings, overrides and isolates (which reorder what follows them, so "Pay 10
//! to Bob" can render as something else), zero-width and other invisible format characters
//! (which hide or join text) and Unicode tag characters make the rendering differ from the
//! content, so text containing them is refused wherever it is accepted for display.

/// Whether `c` must not appear in displayed text.
pub fn is_hidden_or_reordering(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'              // soft hyphen
            | '\u{034F}'            // combining grapheme joiner
            | '\u{061C}'            // Arabic letter mark
            | '\u{115F}'..='\u{1160}' // Hangul fillers
            | '\u{17B4}'..='\u{17B5}' // Khmer inherent vowels
            | '\u{180B}'..='\u{180F}' // Mongolian variation selectors and vowel separator
            | '\u{200B}'..='\u{200F}' // zero-width space, non-joiner, joiner; LRM, RLM
            | '\u{202A}'..='\u{202E}' // LRE, RLE, PDF, LRO, RLO
            | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
            | '\u{2066}'..='\u{206F}' // LRI, RLI, FSI, PDI; deprecated format characters
            | '\u{3164}'            // Hangul filler
            | '\u{FE00}'..='\u{FE0F}' // variation selectors
            | '\u{FEFF}'            // zero-width no-break space
            | '\u{FFA0}'            // halfwidth Hangul filler
            | '\u{FFF9}'..='\u{FFFB}' // interlinear annotation
            | '\u{E0000}'..='\u{E007F}' // tags
            | '\u{E0100}'..='\u{E01EF}' // variation selectors supplement
        )
}

/// Whether `text` can be shown as it reads: no character of [`is_hidden_or_reordering`].
pub fn is_displayable(text: &str) -> bool {
    !text.chars().any(is_hidden_or_reordering)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_in_any_script_is_displayable() {
        for text in [
            "Pay 120.00 EUR to ACME GmbH?",
            "Überweisung an Müller",
            "支付给商家",
            "תשלום לספק",
            "دفع إلى",
            "👍 ok",
        ] {
            assert!(is_displayable(text), "{text}");
        }
    }

    #[test]
    fn reordering_and_invisible_characters_are_refused() {
        for text in [
            "Pay 10\u{202E}00.1 EUR",
            "Bob\u{2066}evil\u{2069}",
            "Pay\u{200B}Bob",
            "Pay\u{200D}Bob",
            "A\u{FEFF}B",
            "tag\u{E0041}",
            "line\nbreak",
            "c1\u{0085}",
            "soft\u{00AD}hyphen",
        ] {
            assert!(!is_displayable(text), "{text:?}");
        }
    }
}

//! Unicode hygiene for names clients send: which characters are invisible
//! (and so can make two names look alike), and the canonical form names are
//! compared in. Pure, no I/O; used by the access rules ([`crate::acl`]) and
//! download file names.

use unicode_normalization::UnicodeNormalization;

/// Characters that render as nothing or reorder text: Unicode's
/// Default_Ignorable_Code_Point set (zero-width spaces and joiners, soft
/// hyphen, variation selectors, tags…), which includes every bidirectional
/// control (U+061C, U+200E–U+200F, U+202A–U+202E, U+2066–U+2069).
pub fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}'..='\u{1160}' | '\u{17B4}'..='\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}' | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
}

/// `text` without invisible and control characters: what a file name shown
/// to a user may contain (a right-to-left override would make
/// `invoice\u{202E}fdp.exe` look like `invoiceexe.pdf`).
pub fn visible(text: &str) -> String {
    text.chars()
        .filter(|c| !is_invisible(*c) && !c.is_control())
        .collect()
}

/// The form in which names are compared: compatibility-normalised (NFKC:
/// full-width and other look-alike forms become the plain letter), without
/// invisible characters, trimmed, lower case. Two names a person cannot tell
/// apart on screen have the same canonical form.
pub fn canonical(text: &str) -> String {
    let normalized: String = text.nfkc().filter(|c| !is_invisible(*c)).collect();
    normalized.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_alike_names_have_one_canonical_form() {
        for (case, name) in [
            ("plain", "vault1"),
            ("upper case", "Vault1"),
            ("leading space", " vault1"),
            ("trailing tab", "vault1\t"),
            ("zero-width space inside", "vau\u{200B}lt1"),
            ("zero-width space first", "\u{200B}vault1"),
            ("byte order mark", "\u{FEFF}vault1"),
            ("full-width letters", "ｖａｕｌｔ１"),
            ("right-to-left override", "\u{202E}vault1"),
        ] {
            assert_eq!(canonical(name), "vault1", "{case}: {name:?}");
        }
        assert_ne!(canonical("vault 1"), "vault1", "inner spaces count");
    }

    #[test]
    fn visible_drops_bidi_controls_and_control_characters() {
        assert_eq!(visible("invoice\u{202E}fdp.exe"), "invoicefdp.exe");
        assert_eq!(visible("a\u{2066}b\u{2069}c\r\n"), "abc");
        assert_eq!(visible("Résumé 2026.pdf"), "Résumé 2026.pdf");
    }
}

//! The smallest single edit that turns one text into another, in UTF-16 code units.
//!
//! A textarea reports its whole value after each keystroke, paste or cut; the board must
//! receive the *edit*, not the value, or every keystroke would delete and re-insert the whole
//! text and collide with everyone else's typing. One input event changes one contiguous range,
//! so one [`Splice`] describes it exactly.
//!
//! Offsets are UTF-16 code units because that is how the browser counts `selectionStart` and
//! how the board's text is indexed (`OffsetKind::Utf16`). A splice never cuts a surrogate pair
//! in two.

/// Replace `delete` code units at `index` with `insert`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splice {
    /// Where the edit starts, in UTF-16 code units.
    pub index: u32,
    /// How many code units are removed.
    pub delete: u32,
    /// What is inserted in their place.
    pub insert: String,
}

fn is_high_surrogate(unit: u16) -> bool {
    (0xD800..=0xDBFF).contains(&unit)
}

fn is_low_surrogate(unit: u16) -> bool {
    (0xDC00..=0xDFFF).contains(&unit)
}

/// The edit that turns `old` into `new`, or `None` when they are equal.
///
/// `caret` is where the caret stands in `new` after the edit (the textarea's `selectionEnd`),
/// if known. Typing into a run of equal letters ("aa" → "aaa") is ambiguous; the caret says
/// which letter was typed, so the edit lands where the user typed it and other people's carets
/// around it stay put.
pub fn diff(old: &str, new: &str, caret: Option<u32>) -> Option<Splice> {
    if old == new {
        return None;
    }
    let old: Vec<u16> = old.encode_utf16().collect();
    let new: Vec<u16> = new.encode_utf16().collect();
    if let Some(splice) = caret.and_then(|caret| diff_at_caret(&old, &new, caret as usize)) {
        return Some(splice);
    }
    Some(diff_by_prefix_and_suffix(&old, &new))
}

/// The edit implied by the caret: an insertion ending at it, or a deletion starting at it, if
/// that explains the change and cuts no surrogate pair.
fn diff_at_caret(old: &[u16], new: &[u16], caret: usize) -> Option<Splice> {
    if caret > new.len() {
        return None;
    }
    let (start, deleted, inserted) = if new.len() > old.len() {
        let grown = new.len() - old.len();
        let start = caret.checked_sub(grown)?;
        (start, 0, grown)
    } else {
        let shrunk = old.len() - new.len();
        (caret, shrunk, 0)
    };
    let same_before = old.get(..start)? == new.get(..start)?;
    let same_after = old.get(start + deleted..)? == new.get(start + inserted..)?;
    if !(same_before && same_after && boundary(old, start) && boundary(old, start + deleted)) {
        return None;
    }
    if !boundary(new, start + inserted) {
        return None;
    }
    Some(Splice {
        index: start as u32,
        delete: deleted as u32,
        insert: String::from_utf16(&new[start..start + inserted]).ok()?,
    })
}

/// Whether `at` falls between two characters of `text` (not inside a surrogate pair).
fn boundary(text: &[u16], at: usize) -> bool {
    at == 0 || at >= text.len() || !is_low_surrogate(text[at])
}

fn diff_by_prefix_and_suffix(old: &[u16], new: &[u16]) -> Splice {
    let mut prefix = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    if prefix > 0 && is_high_surrogate(old[prefix - 1]) {
        prefix -= 1;
    }
    let room = old.len().min(new.len()) - prefix;
    let mut suffix = old.iter().rev().zip(new.iter().rev()).take(room).take_while(|(a, b)| a == b).count();
    if suffix > 0 && is_low_surrogate(old[old.len() - suffix]) {
        suffix -= 1;
    }
    let inserted = &new[prefix..new.len() - suffix];
    Splice {
        index: prefix as u32,
        delete: (old.len() - suffix - prefix) as u32,
        // Both ends sit on character boundaries, so the slice is whole characters.
        insert: String::from_utf16_lossy(inserted),
    }
}

/// Applies `splice` to `text` (UTF-16 offsets). Used by tests and by the client to check its
/// own work.
pub fn apply(text: &str, splice: &Splice) -> String {
    let units: Vec<u16> = text.encode_utf16().collect();
    let start = (splice.index as usize).min(units.len());
    let end = (start + splice.delete as usize).min(units.len());
    let mut out = String::from_utf16_lossy(&units[..start]);
    out.push_str(&splice.insert);
    out.push_str(&String::from_utf16_lossy(&units[end..]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(old: &str, new: &str, caret: Option<u32>) -> Splice {
        let splice = diff(old, new, caret).expect("texts differ");
        assert_eq!(apply(old, &splice), new, "{old:?} -> {new:?} via {splice:?}");
        splice
    }

    #[test]
    fn equal_texts_need_no_edit() {
        assert_eq!(diff("same", "same", Some(2)), None);
    }

    #[test]
    fn typing_is_an_insertion_at_the_caret() {
        let s = check("hello world", "hello, world", Some(6));
        assert_eq!(s, Splice { index: 5, delete: 0, insert: ",".into() });
    }

    #[test]
    fn typing_into_a_run_of_equal_letters_lands_where_the_caret_is() {
        // "aa" with the caret after the first letter, then typing "a".
        let s = check("aa", "aaa", Some(2));
        assert_eq!(s, Splice { index: 1, delete: 0, insert: "a".into() });
        // Without a caret the diff picks the end of the common prefix.
        let s = check("aa", "aaa", None);
        assert_eq!(s.index, 2);
    }

    #[test]
    fn backspace_and_delete_are_deletions() {
        assert_eq!(check("abcd", "abd", Some(2)), Splice { index: 2, delete: 1, insert: "".into() });
        assert_eq!(check("aaaa", "aaa", Some(0)), Splice { index: 0, delete: 1, insert: "".into() });
    }

    #[test]
    fn replacing_a_selection_is_one_splice() {
        let s = check("the quick fox", "the slow fox", Some(8));
        assert_eq!(s, Splice { index: 4, delete: 5, insert: "slow".into() });
    }

    #[test]
    fn offsets_count_utf16_units_and_never_split_a_pair() {
        // "😀" is two UTF-16 units; "é" is one.
        let s = check("é😀", "é😀!", Some(4));
        assert_eq!(s, Splice { index: 3, delete: 0, insert: "!".into() });
        // Two emoji sharing their high surrogate: the splice must take the whole pair.
        let s = check("😀", "😁", None);
        assert_eq!(s, Splice { index: 0, delete: 2, insert: "😁".into() });
        let s = check("x😀y", "x😁y", Some(3));
        assert_eq!(apply("x😀y", &s), "x😁y");
        assert_eq!((s.index, s.delete), (1, 2));
    }

    #[test]
    fn a_wrong_caret_falls_back_to_prefix_and_suffix() {
        check("abc", "abXc", Some(0));
        check("abc", "", Some(3));
        check("", "new text", Some(99));
    }
}

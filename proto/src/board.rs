//! The board as a leader exports it: Markdown with the running notes, then the observation
//! cards grouped by phase.
//!
//! Written once for both exports: the server's (`GET /api/rooms/{room}/export.md`, a plain
//! persistent room) and the browser's (a sealed persistent room, whose board only the members'
//! pages can read). Both give the same file for the same board.

use yrs::{Array, Doc, GetString, Map, Out, ReadTxn, Transact};

use crate::room::Template;

/// The title of an export when the room has none.
pub const UNTITLED: &str = "Balint Room";

/// The board of `doc` as Markdown: `# title` (or [`UNTITLED`]), the notes, then the
/// observation cards grouped by phase in the order of `phases` (phases it does not name come
/// after, by name), oldest card first in each phase.
///
/// Only the cards' own fields are read (`phase`, `created_ms`, `author`, `body`), never
/// values nested in them: a card can nest maps arbitrarily deep, and walking them would
/// overflow the stack.
pub fn to_markdown(doc: &Doc, title: Option<&str>, phases: &[&str]) -> String {
    let txn = doc.transact();
    let mut out = format!("# {}\n\n", title.unwrap_or(UNTITLED));
    let notes = txn.get_text("notes").map(|t| t.get_string(&txn)).unwrap_or_default();
    out.push_str("## Notes\n\n");
    out.push_str(if notes.trim().is_empty() { "(no notes)" } else { notes.trim_end() });
    out.push_str("\n\n## Observations\n");
    let mut cards: Vec<(String, f64, String, String)> = Vec::new();
    if let Some(observations) = txn.get_array("observations") {
        for card in observations.iter(&txn) {
            let Out::YMap(card) = card else { continue };
            let text = |name: &str| match card.get(&txn, name) {
                Some(Out::Any(yrs::Any::String(s))) => s.to_string(),
                Some(Out::YText(t)) => t.get_string(&txn),
                _ => String::new(),
            };
            let created = match card.get(&txn, "created_ms") {
                Some(Out::Any(yrs::Any::Number(yrs::any::Number::Float(n)))) => n,
                Some(Out::Any(yrs::Any::Number(yrs::any::Number::Int(n)))) => n as f64,
                _ => 0.0,
            };
            cards.push((text("phase"), created, text("author"), text("body")));
        }
    }
    if cards.is_empty() {
        out.push_str("\n(no observations)\n");
    }
    let rank = |phase: &str| phases.iter().position(|p| *p == phase).unwrap_or(phases.len());
    cards.sort_by(|a, b| rank(&a.0).cmp(&rank(&b.0)).then(a.0.cmp(&b.0)).then(a.1.total_cmp(&b.1)));
    let mut current: Option<&str> = None;
    for (phase, _, author, body) in &cards {
        if current != Some(phase.as_str()) {
            let heading = if phase.is_empty() { "Other" } else { phase.as_str() };
            out.push_str(&format!("\n### {}\n\n", capitalize(heading)));
            current = Some(phase.as_str());
        }
        let author = if author.is_empty() { String::new() } else { format!("**{author}**: ") };
        out.push_str(&format!("- {author}{}\n", body.trim().replace('\n', "\n  ")));
    }
    out
}

/// The board of `doc` as Markdown, its cards grouped by the phases of `template` in their
/// order: what a leader's export of a room with this template holds.
pub fn export_markdown(doc: &Doc, title: Option<&str>, template: Template) -> String {
    let phases: Vec<&str> = template.phases().iter().map(|p| p.as_str()).collect();
    to_markdown(doc, title, &phases)
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::Phase;
    use yrs::types::text::TextPrelim;
    use yrs::{MapPrelim, Text};

    /// A card as the web client writes it: the body a Y.Text, the rest plain values.
    fn card(doc: &Doc, phase: &str, created_ms: f64, author: &str, body: &str) {
        let observations = doc.get_or_insert_array("observations");
        let mut txn = doc.transact_mut();
        let card = observations.push_back(&mut txn, MapPrelim::default());
        card.insert(&mut txn, "id", format!("c{created_ms}"));
        card.insert(&mut txn, "author", author);
        card.insert(&mut txn, "phase", phase);
        card.insert(&mut txn, "created_ms", created_ms);
        card.insert(&mut txn, "body", TextPrelim::new(body));
    }

    #[test]
    fn an_empty_board_exports_its_title_and_says_it_holds_nothing() {
        let doc = Doc::new();
        assert_eq!(
            to_markdown(&doc, None, &["reflection"]),
            "# Balint Room\n\n## Notes\n\n(no notes)\n\n## Observations\n\n(no observations)\n"
        );
        assert!(to_markdown(&doc, Some("Dienstag"), &[]).starts_with("# Dienstag\n\n"));
    }

    #[test]
    fn notes_come_first_and_cards_group_by_the_templates_phases_oldest_first() {
        let doc = Doc::new();
        doc.get_or_insert_text("notes").push(&mut doc.transact_mut(), "Frau K. called at three.\nTwice.\n\n");
        card(&doc, "reflection", 30.0, "Ada", "anger in the room");
        card(&doc, "questions", 20.0, "Ben", "who else\nwas there?");
        card(&doc, "reflection", 10.0, "", " the doctor's fatigue ");
        card(&doc, "", 5.0, "Cy", "no phase");
        card(&doc, "zeta", 1.0, "Cy", "a phase the template lacks");
        assert_eq!(
            export_markdown(&doc, Some("Tuesday group"), Template::Balint),
            "# Tuesday group\n\n\
             ## Notes\n\nFrau K. called at three.\nTwice.\n\n\
             ## Observations\n\
             \n### Questions\n\n- **Ben**: who else\n  was there?\n\
             \n### Reflection\n\n- the doctor's fatigue\n- **Ada**: anger in the room\n\
             \n### Other\n\n- **Cy**: no phase\n\
             \n### Zeta\n\n- **Cy**: a phase the template lacks\n"
        );
    }

    #[test]
    fn the_phases_of_a_template_are_named_as_on_the_wire() {
        for phase in Template::Balint.phases().iter().chain(Template::Open.phases()) {
            assert_eq!(serde_json::to_value(phase).unwrap(), phase.as_str());
        }
        assert_eq!(Phase::Discussion.as_str(), "discussion");
    }

    #[test]
    fn a_deeply_nested_card_is_read_without_walking_it() {
        let doc = Doc::new();
        let observations = doc.get_or_insert_array("observations");
        {
            let mut txn = doc.transact_mut();
            let mut map = observations.push_back(&mut txn, MapPrelim::default());
            map.insert(&mut txn, "body", "deep");
            for _ in 0..20_000 {
                map = map.insert(&mut txn, "x", MapPrelim::default());
            }
        }
        let export = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || to_markdown(&doc, None, &["reflection"]))
            .unwrap()
            .join()
            .unwrap();
        assert!(export.contains("\n### Other\n\n- deep\n"), "{export}");
    }
}

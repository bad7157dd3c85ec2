//! The web UI speaks every language it offers completely: each language's catalogue has exactly
//! the keys of the English one, with the same `{placeholders}`, for both pages.
//!
//! English lives in the pages' scripts (`const en = {…}` in `web/assets/room.js` and
//! `web/assets/index.js`, plus room.js's `REFUSALS`, which become `refused_<reason>`); every
//! other language in `web/assets/i18n/<code>.js` (`export const room = {…}` and
//! `export const front = {…}`), one for each code of `LANGUAGE_NAMES` in `i18n.js`. A key added
//! to English fails this test until every language has it. The catalogues are read as text: one
//! `key: value` entry per line at two spaces' indent, a value running on until the next entry.
//! A function entry (plurals, ordinals) counts its destructured parameters as its placeholders.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use balint_proto::room::{Phase, Role, Status};

/// A catalogue: key → the names of the values it takes.
type Catalogue = BTreeMap<String, BTreeSet<String>>;

fn web() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").join("web")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The text between `opening` and the first `\n};` after it.
fn object_body<'a>(source: &'a str, opening: &str, file: &str) -> &'a str {
    let rest = source.split_once(opening).unwrap_or_else(|| panic!("{file} has no `{opening}`")).1;
    rest.split_once("\n};").unwrap_or_else(|| panic!("`{opening}` in {file} does not end with `}};`")).0
}

/// An entry's key, when `line` opens one: two spaces, an identifier, a colon.
fn entry_key(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("  ")?;
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
    (end > 0 && rest[end..].starts_with(':')).then(|| &rest[..end])
}

/// The `{name}`s of a string value, or the destructured parameters of a function value.
fn placeholders(value: &str) -> BTreeSet<String> {
    let value = value.trim();
    if let Some(params) = value.strip_prefix("({") {
        let params = params.split_once('}').expect("a function entry's parameters end with `}`").0;
        return params.split(',').map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()).collect();
    }
    let mut found = BTreeSet::new();
    let mut rest = value;
    while let Some(start) = rest.find('{') {
        rest = &rest[start + 1..];
        let Some(end) = rest.find('}') else { break };
        let name = &rest[..end];
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            found.insert(name.to_owned());
        }
        rest = &rest[end..];
    }
    found
}

/// The entries of an object literal's body, with `prefix` before each key.
fn entries(body: &str, prefix: &str, file: &str) -> Catalogue {
    let mut catalogue = Catalogue::new();
    let mut current: Option<(String, String)> = None;
    let finish = |entry: Option<(String, String)>, catalogue: &mut Catalogue| {
        if let Some((key, value)) = entry {
            let names = placeholders(&value);
            assert!(catalogue.insert(key.clone(), names).is_none(), "{file}: `{key}` appears twice");
        }
    };
    for line in body.lines() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        // A spread (`...Object.fromEntries(…)`) ends the entry before it.
        if line.trim_start().starts_with("...") {
            finish(current.take(), &mut catalogue);
            continue;
        }
        if let Some(key) = entry_key(line) {
            finish(current.take(), &mut catalogue);
            let value = line.split_once(':').expect("an entry has a colon").1;
            current = Some((format!("{prefix}{key}"), value.to_owned()));
        } else if let Some((_, value)) = current.as_mut() {
            value.push_str(line);
        }
    }
    finish(current, &mut catalogue);
    catalogue
}

/// The English catalogue of room.js: `en`, and REFUSALS as `refused_<reason>`.
fn english_room() -> Catalogue {
    let source = read(&web().join("assets/room.js"));
    let mut english = entries(object_body(&source, "const en = {", "room.js"), "", "room.js");
    let refusals = entries(object_body(&source, "const REFUSALS = {", "room.js"), "refused_", "room.js");
    assert!(refusals.len() >= 20, "read only {} refusal sentences from room.js", refusals.len());
    for (key, names) in refusals {
        assert!(english.insert(key.clone(), names).is_none(), "room.js: `{key}` is both in en and REFUSALS");
    }
    english
}

fn english_front() -> Catalogue {
    let source = read(&web().join("assets/index.js"));
    entries(object_body(&source, "const en = {", "index.js"), "", "index.js")
}

/// The codes of `LANGUAGE_NAMES` in i18n.js: the languages the picker offers.
fn languages() -> Vec<String> {
    let source = read(&web().join("assets/i18n/i18n.js"));
    let names = source.split_once("LANGUAGE_NAMES = {").expect("i18n.js has LANGUAGE_NAMES").1;
    let names = names.split_once('}').expect("LANGUAGE_NAMES ends").0;
    names.split(',').filter_map(|pair| pair.split_once(':')).map(|(code, _)| code.trim().to_owned()).collect()
}

/// Every difference between `english` and `other`, one line each.
fn differences(english: &Catalogue, other: &Catalogue) -> Vec<String> {
    let mut found = Vec::new();
    for (key, names) in english {
        match other.get(key) {
            None => found.push(format!("missing `{key}`")),
            Some(theirs) if theirs != names => {
                found.push(format!("`{key}` takes {theirs:?}, English takes {names:?}"));
            }
            Some(_) => {}
        }
    }
    for key in other.keys().filter(|key| !english.contains_key(*key)) {
        found.push(format!("`{key}` is not in English"));
    }
    found
}

#[test]
fn the_picker_offers_english_german_and_french() {
    let codes = languages();
    for code in ["en", "de", "fr"] {
        assert!(codes.iter().any(|c| c == code), "LANGUAGE_NAMES lacks `{code}`: {codes:?}");
    }
}

#[test]
fn every_language_has_every_key_with_the_same_placeholders() {
    let english = [("room", "room.js", english_room()), ("front", "index.js", english_front())];
    let mut problems = Vec::new();
    for code in languages().into_iter().filter(|code| code != "en") {
        let file = format!("i18n/{code}.js");
        let source = read(&web().join("assets").join(&file));
        for (export, page, english) in &english {
            let theirs = entries(object_body(&source, &format!("export const {export} = {{"), &file), "", &file);
            problems.extend(differences(english, &theirs).into_iter().map(|p| format!("{file} `{export}`: {p}")));
            // The page must load it, or the catalogue is never used.
            let page_source = read(&web().join("assets").join(page));
            assert!(
                page_source.contains(&format!("{code}: {code}.{export}")),
                "{page} does not put {file}'s `{export}` in its CATALOGUES"
            );
        }
    }
    assert!(problems.is_empty(), "the catalogues differ from English:\n{}", problems.join("\n"));
}

#[test]
fn every_text_the_html_names_is_in_the_catalogue() {
    for (html, english) in [("room.html", english_room()), ("index.html", english_front())] {
        let mut source = read(&web().join(html));
        // Comments may show the attributes by way of example.
        while let Some(start) = source.find("<!--") {
            let end = source[start..].find("-->").map_or(source.len(), |end| start + end + 3);
            source.replace_range(start..end, "");
        }
        for attribute in ["data-i18n=\"", "data-i18n-label=\""] {
            for piece in source.split(attribute).skip(1) {
                let key = piece.split_once('"').expect("the attribute ends").0;
                assert!(english.contains_key(key), "{html} names `{key}`, which its catalogue lacks");
            }
        }
    }
}

/// The variant names serde knows for `T`, from the error of an unknown one.
fn variant_names<T: serde::de::DeserializeOwned + std::fmt::Debug>() -> Vec<String> {
    let error = serde_json::from_str::<T>(r#""no such variant""#).expect_err("not a variant").to_string();
    let list = error.split_once("expected one of ").expect("serde lists the variants").1;
    let list = list.split_once(" at line").map_or(list, |(list, _)| list);
    list.split(", ")
        .map(|name| name.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).to_owned())
        .collect()
}

#[test]
fn every_phase_role_status_and_meeting_end_has_a_sentence() {
    let english = english_room();
    let mut wanted: Vec<String> = Vec::new();
    for phase in variant_names::<Phase>() {
        wanted.push(format!("phase_{phase}"));
        wanted.push(format!("hint_{phase}"));
    }
    wanted.extend(variant_names::<Role>().iter().map(|role| format!("role_{role}")));
    wanted.extend(variant_names::<Status>().iter().map(|status| format!("status_{status}")));
    // docs/PROTOCOL.md's `ended` reasons (`deleted` has its own screen; `ended` says nothing more).
    wanted.extend(["why_ended_by_leader", "why_empty", "why_max_length", "deleted"].map(String::from));
    let missing: Vec<&String> = wanted.iter().filter(|key| !english.contains_key(*key)).collect();
    assert!(missing.is_empty(), "room.js has no sentence for {missing:?}");
}

/// Runs `script` (an ES module) with Node.js and returns what it printed.
fn node(script: &str) -> String {
    let out = std::process::Command::new("node")
        .args(["--input-type=module", "-e", script])
        .output()
        .unwrap_or_else(|e| panic!("`node` cannot be run ({e}): run `scripts/test.sh`, which installs Node.js"));
    assert!(out.status.success(), "node failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// The notice for a member back after the grace period says the server's grace period (sent
/// as `released.grace_secs`) in words of the page's language, through `formatters().span`.
#[test]
fn a_length_of_time_is_said_in_words_of_each_language() {
    let module = web().join("assets/i18n/i18n.js");
    let url = format!("file://{}", module.display());
    let printed = node(&format!(
        "const {{ formatters }} = await import({url:?});
         for (const lang of ['en', 'de', 'fr']) {{
           const {{ span }} = formatters(lang);
           console.log([120, 90, 3600, 1].map(span).join(' | '));
         }}"
    ));
    // French puts a no-break space between number and unit where ICU's data says so.
    let printed = printed.replace(['\u{a0}', '\u{202f}'], " ");
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(
        lines,
        [
            "2 minutes | 90 seconds | 1 hour | 1 second",
            "2 Minuten | 90 Sekunden | 1 Stunde | 1 Sekunde",
            "2 minutes | 90 secondes | 1 heure | 1 seconde",
        ]
    );
}

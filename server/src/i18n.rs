//! The server's texts for people, in several languages (Project Fluent).
//!
//! Each shipped language has its `.ftl` files under `server/locales/<lang>/`, compiled into the
//! server, one file per area: `prompt.ftl` (the hosted prompt page), `device.ftl` (the default
//! texts written into the requests signed for devices) and `messages.ftl` (SMS, voice and email
//! passcode messages). A request names the languages it wants (a request's `locale` or a flow's
//! `ui_locales`, then the user's preferred locale, then the browser's `Accept-Language`);
//! [`Catalog::negotiate`] picks the best shipped one, English when none fits. Texts are plain
//! strings: the page puts them in the document as text, never as markup. See docs/i18n.md.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use fluent_bundle::concurrent::FluentBundle;
use fluent_bundle::{FluentArgs, FluentResource, FluentValue};
use fluent_langneg::{NegotiationStrategy, negotiate_languages};
use unic_langid::LanguageIdentifier;

/// The language every message exists in, and the one used when nothing else fits.
pub const FALLBACK_LANGUAGE: &str = "en";

/// The hosted prompt page's texts (what [`Catalog::texts`] hands the page).
const PROMPT_FILE: &str = "prompt.ftl";

/// The shipped languages and their files (`name`, text). Adding a language: a directory under
/// `server/locales/` with every file English has, and a line here (docs/i18n.md).
const RESOURCES: &[(&str, &[(&str, &str)])] = &[
    (
        "en",
        &[
            (PROMPT_FILE, include_str!("../locales/en/prompt.ftl")),
            ("device.ftl", include_str!("../locales/en/device.ftl")),
            ("messages.ftl", include_str!("../locales/en/messages.ftl")),
        ],
    ),
    (
        "de",
        &[
            (PROMPT_FILE, include_str!("../locales/de/prompt.ftl")),
            ("device.ftl", include_str!("../locales/de/device.ftl")),
            ("messages.ftl", include_str!("../locales/de/messages.ftl")),
        ],
    ),
    (
        "fr",
        &[
            (PROMPT_FILE, include_str!("../locales/fr/prompt.ftl")),
            ("device.ftl", include_str!("../locales/fr/device.ftl")),
            ("messages.ftl", include_str!("../locales/fr/messages.ftl")),
        ],
    ),
];

/// One argument of a message: text (an application's name, a code) or a number (minutes,
/// counts; numbers select plural forms).
#[derive(Debug, Clone, PartialEq)]
pub enum Arg<'a> {
    /// Text, inserted as is.
    Text(&'a str),
    /// A whole number.
    Number(i64),
}

/// The most language tags a request may name (more are ignored).
pub const MAX_REQUESTED_LANGUAGES: usize = 16;

/// The longest language tag considered, in bytes.
pub const MAX_LANGUAGE_TAG_BYTES: usize = 35;

/// Loading the shipped texts failed (a broken `.ftl` file: a build that a unit test refuses).
#[derive(Debug, Clone, thiserror::Error)]
pub enum I18nError {
    /// A shipped language tag does not parse.
    #[error("the shipped language tag {0} is not valid")]
    BadLanguageTag(&'static str),
    /// A shipped resource does not parse or repeats a message.
    #[error("the shipped texts of {0} do not load")]
    BadResource(&'static str),
    /// A message is missing from the fallback language.
    #[error("no message {0} in the fallback language")]
    MissingMessage(String),
}

/// One shipped language.
struct Language {
    id: LanguageIdentifier,
    bundle: FluentBundle<FluentResource>,
    /// Every message id, by file.
    message_ids: BTreeMap<&'static str, Vec<String>>,
}

/// Every shipped language's texts.
pub struct Catalog {
    languages: Vec<Language>,
}

impl Catalog {
    /// Loads the texts compiled into the server.
    pub fn load() -> Result<Catalog, I18nError> {
        let mut languages = Vec::new();
        for (tag, files) in RESOURCES {
            let id: LanguageIdentifier = tag.parse().map_err(|_| I18nError::BadLanguageTag(tag))?;
            let mut bundle = FluentBundle::new_concurrent(vec![id.clone()]);
            // Texts go into pages, requests and messages as plain text; no bidi isolation marks
            // around arguments (arguments are checked as displayable where they come in).
            bundle.set_use_isolating(false);
            let mut message_ids = BTreeMap::new();
            for (file, source) in *files {
                let resource = FluentResource::try_new((*source).to_string())
                    .map_err(|_| I18nError::BadResource(tag))?;
                let ids: Vec<String> = resource
                    .entries()
                    .filter_map(|entry| match entry {
                        fluent_syntax::ast::Entry::Message(m) => Some(m.id.name.to_string()),
                        _ => None,
                    })
                    .collect();
                message_ids.insert(*file, ids);
                // A message repeated across files is refused here.
                bundle
                    .add_resource(resource)
                    .map_err(|_| I18nError::BadResource(tag))?;
            }
            languages.push(Language {
                id,
                bundle,
                message_ids,
            });
        }
        Ok(Catalog { languages })
    }

    /// The texts compiled into the server, loaded once.
    pub fn shipped() -> Result<&'static Catalog, I18nError> {
        static CATALOG: OnceLock<Result<Catalog, I18nError>> = OnceLock::new();
        CATALOG
            .get_or_init(Catalog::load)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The shipped languages' tags.
    pub fn languages(&self) -> Vec<String> {
        self.languages.iter().map(|l| l.id.to_string()).collect()
    }

    /// The best shipped language for `preferred` tags (most wanted first, e.g. a flow's
    /// `ui_locales`), then an `Accept-Language` header; English when none fits. Tags that do not
    /// parse are skipped.
    pub fn negotiate(&self, preferred: &[String], accept_language: Option<&str>) -> String {
        let mut requested: Vec<LanguageIdentifier> = preferred
            .iter()
            .filter(|t| t.len() <= MAX_LANGUAGE_TAG_BYTES)
            .filter_map(|t| t.parse().ok())
            .take(MAX_REQUESTED_LANGUAGES)
            .collect();
        if let Some(header) = accept_language {
            requested.extend(
                fluent_langneg::parse_accepted_languages(header)
                    .into_iter()
                    .take(MAX_REQUESTED_LANGUAGES),
            );
        }
        let available: Vec<LanguageIdentifier> =
            self.languages.iter().map(|l| l.id.clone()).collect();
        let fallback: LanguageIdentifier = FALLBACK_LANGUAGE
            .parse()
            .unwrap_or_else(|_| LanguageIdentifier::default());
        negotiate_languages(
            &requested,
            &available,
            Some(&fallback),
            NegotiationStrategy::Lookup,
        )
        .first()
        .map(|l| l.to_string())
        .unwrap_or_else(|| FALLBACK_LANGUAGE.to_string())
    }

    fn language(&self, tag: &str) -> Option<&Language> {
        self.languages.iter().find(|l| l.id == tag)
    }

    /// One message in `lang` (falling back to English for a message a translation lacks).
    pub fn message(&self, lang: &str, id: &str) -> Option<String> {
        self.format(lang, id, &[])
    }

    /// One message with its arguments in `lang` (falling back to English for a message a
    /// translation lacks or cannot format).
    pub fn format(&self, lang: &str, id: &str, args: &[(&str, Arg<'_>)]) -> Option<String> {
        let mut fluent_args = FluentArgs::new();
        for (name, value) in args {
            match value {
                Arg::Text(text) => fluent_args.set(*name, FluentValue::from(*text)),
                Arg::Number(n) => fluent_args.set(*name, FluentValue::from(*n)),
            }
        }
        [lang, FALLBACK_LANGUAGE].iter().find_map(|tag| {
            let language = self.language(tag)?;
            let message = language.bundle.get_message(id)?;
            let pattern = message.value()?;
            let mut errors = Vec::new();
            let text = language
                .bundle
                .format_pattern(pattern, Some(&fluent_args), &mut errors);
            errors.is_empty().then(|| text.into_owned())
        })
    }

    /// The hosted prompt page's messages (every one English has), in `lang`, by id.
    pub fn texts(&self, lang: &str) -> Result<BTreeMap<String, String>, I18nError> {
        let fallback = self
            .language(FALLBACK_LANGUAGE)
            .ok_or(I18nError::BadLanguageTag(FALLBACK_LANGUAGE))?;
        fallback
            .message_ids
            .get(PROMPT_FILE)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|id| {
                self.message(lang, id)
                    .map(|text| (id.clone(), text))
                    .ok_or_else(|| I18nError::MissingMessage(id.clone()))
            })
            .collect()
    }
}

/// Whether `tag` is a well-formed BCP 47 language tag of at most [`MAX_LANGUAGE_TAG_BYTES`]
/// (e.g. `de`, `fr-CA`, `zh-Hant-TW`). Whether a language is shipped is another matter: an
/// unshipped one falls back to English.
pub fn is_language_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= MAX_LANGUAGE_TAG_BYTES
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && tag.parse::<LanguageIdentifier>().is_ok()
}

/// One message of the shipped catalog in the best shipped language for `wanted` (most wanted
/// first; English when none fits).
pub fn localized(wanted: &[&str], id: &str, args: &[(&str, Arg<'_>)]) -> Result<String, I18nError> {
    let catalog = Catalog::shipped()?;
    let wanted: Vec<String> = wanted.iter().map(|t| t.to_string()).collect();
    let lang = catalog.negotiate(&wanted, None);
    catalog
        .format(&lang, id, args)
        .ok_or_else(|| I18nError::MissingMessage(id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sample values for every argument a shipped message may use; a message naming another
    /// argument fails to format, so the test below catches it.
    fn sample_args() -> FluentArgs<'static> {
        let mut args = FluentArgs::new();
        args.set("application", "Example Bank");
        args.set("device", "Pixel 8");
        args.set("count", 3);
        args.set("code", "123456");
        args.set("minutes", 5);
        args
    }

    #[test]
    fn every_message_exists_in_every_shipped_language() {
        let catalog = Catalog::load().unwrap();
        assert_eq!(catalog.languages(), vec!["en", "de", "fr"]);
        let english = &catalog.language("en").unwrap().message_ids;
        assert_eq!(
            english.keys().copied().collect::<Vec<_>>(),
            vec!["device.ftl", "messages.ftl", "prompt.ftl"]
        );
        assert!(english[PROMPT_FILE].len() > 20, "{english:?}");
        for language in &catalog.languages {
            assert_eq!(
                language.message_ids.keys().collect::<Vec<_>>(),
                english.keys().collect::<Vec<_>>(),
                "{} has other files than en",
                language.id
            );
            for (file, ids) in &language.message_ids {
                let mut ids = ids.clone();
                ids.sort();
                let mut expected = english[file].clone();
                expected.sort();
                assert_eq!(
                    ids, expected,
                    "{} {file} has other messages than en",
                    language.id
                );
                for id in &ids {
                    let message = language.bundle.get_message(id).unwrap();
                    let mut errors = Vec::new();
                    let text = language.bundle.format_pattern(
                        message.value().unwrap(),
                        Some(&sample_args()),
                        &mut errors,
                    );
                    assert!(errors.is_empty(), "{}: {id}: {errors:?}", language.id);
                    assert!(!text.trim().is_empty(), "{}: {id} is empty", language.id);
                }
            }
        }
    }

    #[test]
    fn messages_take_their_arguments_and_plural_forms() {
        let catalog = Catalog::load().unwrap();
        let code = |lang: &str, minutes: i64| {
            catalog
                .format(
                    lang,
                    "code-text",
                    &[
                        ("application", Arg::Text("Bank")),
                        ("code", Arg::Text("123456")),
                        ("minutes", Arg::Number(minutes)),
                    ],
                )
                .unwrap()
        };
        assert_eq!(
            code("en", 5),
            "Bank: your sign-in code is 123456. It expires in 5 minutes. Never share it."
        );
        assert_eq!(
            code("en", 1),
            "Bank: your sign-in code is 123456. It expires in 1 minute. Never share it."
        );
        assert!(code("de", 1).contains("1 Minute ab"), "{}", code("de", 1));
        assert!(code("fr", 5).contains("5 minutes"), "{}", code("fr", 5));
        let add = |lang: &str, count: i64| {
            catalog
                .format(
                    lang,
                    "add-device",
                    &[
                        ("device", Arg::Text("Pixel 8")),
                        ("count", Arg::Number(count)),
                    ],
                )
                .unwrap()
        };
        assert_eq!(add("en", 2), "Add Pixel 8 (new) as a second device");
        assert_eq!(add("en", 11), "Add Pixel 8 (new) as device number 11");
        assert_eq!(add("de", 3), "Pixel 8 (neu) hinzufügen als drittes Gerät");
        assert_eq!(
            localized(
                &["fr-CA"],
                "sign-in-prompt",
                &[("application", Arg::Text("Bank"))]
            )
            .unwrap(),
            "Se connecter à Bank ?"
        );
        assert_eq!(
            localized(
                &["ja", "xx"],
                "sign-in-prompt",
                &[("application", Arg::Text("Bank"))]
            )
            .unwrap(),
            "Sign in to Bank?"
        );
        assert!(localized(&[], "no-such-message", &[]).is_err());
        // The page gets its own texts only.
        assert!(!catalog.texts("en").unwrap().contains_key("code-text"));
    }

    #[test]
    fn language_tags_are_checked() {
        for good in ["de", "fr-CA", "zh-Hant-TW", "en-US", "gsw"] {
            assert!(is_language_tag(good), "{good}");
        }
        for bad in [
            "",
            "<b>",
            "de_DE",
            "deutsch!",
            "en-US-",
            "a",
            &"x".repeat(40),
            "de\u{202e}",
        ] {
            assert!(!is_language_tag(bad), "{bad}");
        }
    }

    #[test]
    fn the_flow_languages_come_first_then_the_browser_then_english() {
        let catalog = Catalog::load().unwrap();
        let tags = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(catalog.negotiate(&tags(&["de"]), Some("fr")), "de");
        assert_eq!(catalog.negotiate(&tags(&["de-AT"]), None), "de");
        assert_eq!(catalog.negotiate(&tags(&["xx", "fr-CA"]), None), "fr");
        assert_eq!(
            catalog.negotiate(&[], Some("fr-FR,fr;q=0.9,en;q=0.5")),
            "fr"
        );
        assert_eq!(catalog.negotiate(&[], Some("ja, zh;q=0.8")), "en");
        assert_eq!(catalog.negotiate(&tags(&["<script>"]), Some("\u{0}")), "en");
        assert_eq!(catalog.negotiate(&[], None), "en");
        assert_eq!(catalog.texts("de").unwrap()["cancel"], "Abbrechen");
        assert_eq!(catalog.texts("en").unwrap()["cancel"], "Cancel");
    }
}

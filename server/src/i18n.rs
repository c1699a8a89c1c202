//! The server's texts for people, in several languages (Project Fluent).
//!
//! Each shipped language has its `.ftl` files under `server/locales/<lang>/`, compiled into the
//! server. The hosted prompt page (`prompt.ftl`) is the first user; texts the server sends to
//! devices can move here later. A request names the languages it wants (a flow's `ui_locales`,
//! then the browser's `Accept-Language`); [`Catalog::negotiate`] picks the best shipped one,
//! English when none fits. Texts are plain strings: the page puts them in the document as text,
//! never as markup.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use fluent_bundle::FluentResource;
use fluent_bundle::concurrent::FluentBundle;
use fluent_langneg::{NegotiationStrategy, negotiate_languages};
use unic_langid::LanguageIdentifier;

/// The language every message exists in, and the one used when nothing else fits.
pub const FALLBACK_LANGUAGE: &str = "en";

/// The shipped languages and their hosted prompt texts.
const PROMPT_RESOURCES: &[(&str, &str)] = &[
    ("en", include_str!("../locales/en/prompt.ftl")),
    ("de", include_str!("../locales/de/prompt.ftl")),
    ("fr", include_str!("../locales/fr/prompt.ftl")),
];

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
    message_ids: Vec<String>,
}

/// Every shipped language's texts.
pub struct Catalog {
    languages: Vec<Language>,
}

impl Catalog {
    /// Loads the texts compiled into the server.
    pub fn load() -> Result<Catalog, I18nError> {
        let mut languages = Vec::new();
        for (tag, source) in PROMPT_RESOURCES {
            let id: LanguageIdentifier = tag.parse().map_err(|_| I18nError::BadLanguageTag(tag))?;
            let resource = FluentResource::try_new((*source).to_string())
                .map_err(|_| I18nError::BadResource(tag))?;
            let message_ids = resource
                .entries()
                .filter_map(|entry| match entry {
                    fluent_syntax::ast::Entry::Message(m) => Some(m.id.name.to_string()),
                    _ => None,
                })
                .collect();
            let mut bundle = FluentBundle::new_concurrent(vec![id.clone()]);
            // Texts go into the page as plain text; no bidi isolation marks around arguments.
            bundle.set_use_isolating(false);
            bundle
                .add_resource(resource)
                .map_err(|_| I18nError::BadResource(tag))?;
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
        [lang, FALLBACK_LANGUAGE].iter().find_map(|tag| {
            let language = self.language(tag)?;
            let message = language.bundle.get_message(id)?;
            let pattern = message.value()?;
            let mut errors = Vec::new();
            let text = language.bundle.format_pattern(pattern, None, &mut errors);
            errors.is_empty().then(|| text.into_owned())
        })
    }

    /// Every message of the fallback language, in `lang`, by id.
    pub fn texts(&self, lang: &str) -> Result<BTreeMap<String, String>, I18nError> {
        let fallback = self
            .language(FALLBACK_LANGUAGE)
            .ok_or(I18nError::BadLanguageTag(FALLBACK_LANGUAGE))?;
        fallback
            .message_ids
            .iter()
            .map(|id| {
                self.message(lang, id)
                    .map(|text| (id.clone(), text))
                    .ok_or_else(|| I18nError::MissingMessage(id.clone()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_exists_in_every_shipped_language() {
        let catalog = Catalog::load().unwrap();
        assert_eq!(catalog.languages(), vec!["en", "de", "fr"]);
        let english = &catalog.language("en").unwrap().message_ids;
        assert!(english.len() > 20, "{english:?}");
        for language in &catalog.languages {
            let mut ids = language.message_ids.clone();
            ids.sort();
            let mut expected = english.clone();
            expected.sort();
            assert_eq!(ids, expected, "{} has other messages than en", language.id);
            for id in &language.message_ids {
                let message = language.bundle.get_message(id).unwrap();
                let mut errors = Vec::new();
                let text =
                    language
                        .bundle
                        .format_pattern(message.value().unwrap(), None, &mut errors);
                assert!(errors.is_empty(), "{}: {id}: {errors:?}", language.id);
                assert!(!text.trim().is_empty(), "{}: {id} is empty", language.id);
            }
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

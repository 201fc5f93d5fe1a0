//! Entity tags and the preconditions a write states about the version it
//! was based on.
//!
//! A record's entity tag is the strong tag `"<version>"`. `If-Match` uses
//! strong comparison, so a weak tag never matches; `If-None-Match` uses weak
//! comparison. Both headers accept a comma-separated list, split only outside
//! quotes (RFC 9110, section 8.8.3).

use std::fmt;

/// One entity tag: `"opaque"` or `W/"opaque"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityTag {
    pub weak: bool,
    pub opaque: String,
}

impl EntityTag {
    /// Returns the strong tag of a record version.
    pub fn for_version(version: i64) -> Self {
        Self { weak: false, opaque: version.to_string() }
    }

    pub fn strong(opaque: impl Into<String>) -> Self {
        Self { weak: false, opaque: opaque.into() }
    }

    /// Weak comparison: the opaque parts are equal, whatever the prefixes.
    pub fn weak_eq(&self, other: &EntityTag) -> bool {
        self.opaque == other.opaque
    }
}

impl fmt::Display for EntityTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.weak {
            f.write_str("W/")?;
        }
        write!(f, "\"{}\"", self.opaque)
    }
}

/// A precondition header or member that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreconditionError {
    #[error("{header} is not a valid entity tag list: {reason}")]
    MalformedHeader { header: &'static str, reason: String },
    #[error("If-Match tag {tag} is not a record version; record entity tags look like \"7\"")]
    NotAVersion { tag: String },
    #[error("If-Match ({header}) and the body's version ({body}) disagree; send the same version in both or only one of them")]
    Disagree { header: String, body: i64 },
    #[error("If-None-Match on a write supports only \"*\" (create if absent)")]
    UnsupportedIfNoneMatch,
}

/// A parsed `If-Match` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    Any,
    Tags(Vec<EntityTag>),
}

/// A parsed `If-None-Match` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfNoneMatch {
    Any,
    Tags(Vec<EntityTag>),
}

impl IfMatch {
    pub fn parse(value: &str) -> Result<Self, PreconditionError> {
        match parse_tag_list(value, "If-Match")? {
            None => Ok(Self::Any),
            Some(tags) => Ok(Self::Tags(tags)),
        }
    }
}

impl IfNoneMatch {
    pub fn parse(value: &str) -> Result<Self, PreconditionError> {
        match parse_tag_list(value, "If-None-Match")? {
            None => Ok(Self::Any),
            Some(tags) => Ok(Self::Tags(tags)),
        }
    }

    /// Evaluates the header against the current tag with weak comparison:
    /// `true` means "the client already has it", so a GET returns 304.
    pub fn matches(&self, current: &EntityTag) -> bool {
        match self {
            Self::Any => true,
            Self::Tags(tags) => tags.iter().any(|tag| tag.weak_eq(current)),
        }
    }
}

/// Parses `*` (returned as `None`) or a list of entity tags. Empty list
/// elements are allowed, as in every RFC 9110 list.
fn parse_tag_list(value: &str, header: &'static str) -> Result<Option<Vec<EntityTag>>, PreconditionError> {
    let malformed = |reason: &str| PreconditionError::MalformedHeader { header, reason: reason.to_owned() };

    let trimmed = value.trim_matches([' ', '\t']);
    if trimmed == "*" {
        return Ok(None);
    }

    let mut tags = Vec::new();
    let mut rest = trimmed;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }

        let weak = rest.starts_with("W/");
        if weak {
            rest = &rest[2..];
        }
        let Some(quoted) = rest.strip_prefix('"') else {
            return Err(malformed("each tag must be a quoted string such as \"7\""));
        };
        let Some(end) = quoted.find('"') else {
            return Err(malformed("a quoted tag is missing its closing quote"));
        };
        let opaque = &quoted[..end];
        if !opaque.chars().all(|c| c == '!' || ('#'..='~').contains(&c) || !c.is_ascii()) {
            return Err(malformed("a tag contains a character that entity tags do not allow"));
        }
        tags.push(EntityTag { weak, opaque: opaque.to_owned() });

        rest = quoted[end + 1..].trim_start_matches([' ', '\t']);
        if !rest.is_empty() && !rest.starts_with(',') {
            return Err(malformed("tags must be separated by commas"));
        }
    }

    if tags.is_empty() {
        return Err(malformed("the header is empty"));
    }
    Ok(Some(tags))
}

/// The version a write was based on, from `If-Match`, the body's `version`
/// member, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// `If-Match: *`: any current version.
    Any,
    /// Exactly this version.
    Exactly(i64),
    /// Any of several versions (an `If-Match` list).
    OneOf(Vec<i64>),
    /// Only weak tags were sent. Strong comparison never matches them, so the
    /// write is stale whatever the current version; `base` is the highest
    /// version named, kept for the conflict report.
    Never { base: Option<i64> },
}

impl ExpectedVersion {
    /// Combines `If-Match` and the body's `version`. `Ok(None)` means the
    /// request stated no expected version at all.
    ///
    /// # Errors
    ///
    /// A tag that is not a version number, or a header that does not name the
    /// body's version.
    pub fn resolve(if_match: Option<&IfMatch>, body_version: Option<i64>) -> Result<Option<Self>, PreconditionError> {
        let tags = match (if_match, body_version) {
            (None, None) => return Ok(None),
            (None, Some(version)) | (Some(IfMatch::Any), Some(version)) => return Ok(Some(Self::Exactly(version))),
            (Some(IfMatch::Any), None) => return Ok(Some(Self::Any)),
            (Some(IfMatch::Tags(tags)), _) => tags,
        };

        let mut strong = Vec::new();
        let mut weak = Vec::new();
        for tag in tags {
            let version = parse_version_tag(&tag.opaque).ok_or_else(|| PreconditionError::NotAVersion { tag: tag.to_string() })?;
            if tag.weak { weak.push(version) } else { strong.push(version) }
        }

        if let Some(body) = body_version {
            if strong.contains(&body) {
                return Ok(Some(Self::Exactly(body)));
            }
            let header = tags.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            return Err(PreconditionError::Disagree { header, body });
        }

        strong.sort_unstable();
        strong.dedup();
        Ok(Some(match strong.as_slice() {
            [] => Self::Never { base: weak.into_iter().max() },
            [version] => Self::Exactly(*version),
            _ => Self::OneOf(strong),
        }))
    }

    /// Strong comparison against the current version.
    pub fn matches(&self, current: i64) -> bool {
        match self {
            Self::Any => true,
            Self::Exactly(version) => *version == current,
            Self::OneOf(versions) => versions.contains(&current),
            Self::Never { .. } => false,
        }
    }

    /// The version that a stale write is compared against in a conflict
    /// report: the version named, or the highest of several.
    pub fn base_version(&self) -> Option<i64> {
        match self {
            Self::Any => None,
            Self::Exactly(version) => Some(*version),
            Self::OneOf(versions) => versions.iter().copied().max(),
            Self::Never { base } => *base,
        }
    }
}

/// Reads a tag's opaque part as a version: a decimal integer from 1 up to
/// `i64::MAX`, without sign or leading zeros.
fn parse_version_tag(opaque: &str) -> Option<i64> {
    if opaque.is_empty() || opaque.starts_with('0') || !opaque.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    opaque.parse::<i64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(value: &str) -> Vec<EntityTag> {
        match IfMatch::parse(value).unwrap() {
            IfMatch::Tags(tags) => tags,
            IfMatch::Any => panic!("expected tags"),
        }
    }

    #[test]
    fn parses_star_and_lists() {
        assert_eq!(IfMatch::parse(" * ").unwrap(), IfMatch::Any);
        assert_eq!(tags("\"7\""), vec![EntityTag::strong("7")]);
        assert_eq!(
            tags("\"1\", W/\"2\",,\"a,b\""),
            vec![EntityTag::strong("1"), EntityTag { weak: true, opaque: "2".into() }, EntityTag::strong("a,b")]
        );
    }

    #[test]
    fn rejects_malformed_lists() {
        for value in ["", "7", "\"7", "\"7\" \"8\"", "w/\"7\"", "\"a\"b\"", ", ,", "\"a b\""] {
            assert!(IfMatch::parse(value).is_err(), "{value:?} should be rejected");
        }
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let current = EntityTag::for_version(3);
        assert!(IfNoneMatch::parse("W/\"3\"").unwrap().matches(&current));
        assert!(IfNoneMatch::parse("\"1\", \"3\"").unwrap().matches(&current));
        assert!(IfNoneMatch::parse("*").unwrap().matches(&current));
        assert!(!IfNoneMatch::parse("\"4\"").unwrap().matches(&current));
    }

    #[test]
    fn resolve_needs_header_or_body() {
        assert_eq!(ExpectedVersion::resolve(None, None), Ok(None));
        assert_eq!(ExpectedVersion::resolve(None, Some(4)), Ok(Some(ExpectedVersion::Exactly(4))));
    }

    #[test]
    fn resolve_combines_header_and_body() {
        let header = IfMatch::parse("\"4\", \"5\"").unwrap();
        assert_eq!(ExpectedVersion::resolve(Some(&header), Some(5)), Ok(Some(ExpectedVersion::Exactly(5))));
        assert!(matches!(
            ExpectedVersion::resolve(Some(&header), Some(6)),
            Err(PreconditionError::Disagree { body: 6, .. })
        ));
        assert_eq!(ExpectedVersion::resolve(Some(&IfMatch::Any), Some(2)), Ok(Some(ExpectedVersion::Exactly(2))));
        assert_eq!(ExpectedVersion::resolve(Some(&IfMatch::Any), None), Ok(Some(ExpectedVersion::Any)));
    }

    #[test]
    fn weak_tags_never_match() {
        let header = IfMatch::parse("W/\"3\"").unwrap();
        let expected = ExpectedVersion::resolve(Some(&header), None).unwrap().unwrap();
        assert_eq!(expected, ExpectedVersion::Never { base: Some(3) });
        assert!(!expected.matches(3));
        assert!(matches!(ExpectedVersion::resolve(Some(&header), Some(3)), Err(PreconditionError::Disagree { .. })));
    }

    #[test]
    fn non_version_tags_are_rejected() {
        for value in ["\"abc\"", "\"0\"", "\"07\"", "\"-1\"", "\"99999999999999999999\""] {
            let header = IfMatch::parse(value).unwrap();
            assert!(
                matches!(ExpectedVersion::resolve(Some(&header), None), Err(PreconditionError::NotAVersion { .. })),
                "{value}"
            );
        }
    }

    #[test]
    fn lists_match_any_strong_member() {
        let header = IfMatch::parse("\"2\", W/\"9\", \"4\"").unwrap();
        let expected = ExpectedVersion::resolve(Some(&header), None).unwrap().unwrap();
        assert!(expected.matches(2));
        assert!(expected.matches(4));
        assert!(!expected.matches(9));
        assert_eq!(expected.base_version(), Some(4));
    }

    proptest::proptest! {
        #[test]
        fn version_tags_round_trip(version in 1i64..=i64::MAX) {
            let header = IfMatch::parse(&EntityTag::for_version(version).to_string()).unwrap();
            let expected = ExpectedVersion::resolve(Some(&header), None).unwrap().unwrap();
            proptest::prop_assert_eq!(expected, ExpectedVersion::Exactly(version));
        }

        #[test]
        fn parser_never_panics(value in ".{0,40}") {
            let _ = IfMatch::parse(&value);
            let _ = IfNoneMatch::parse(&value);
        }
    }
}

//! Route paths: exact paths (`/api/users`) and wildcard patterns (`/static/*`, `/wild/*/hello/*`),
//! parsed into the shape `juggler::router::PathPattern` matches with, and compared for shadowing.

/// A route path after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathKind {
    /// Matched with string equality in the generated `match`.
    Exact,
    Wildcard(Pattern),
}

/// Owned counterpart of `juggler::router::PathPattern`, which holds `&'static str`s so that
/// generated statics can name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub segments: Vec<Segment>,
    /// Ends in `/*`: anything after the last segment's `/` matches.
    pub prefix: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `*` in the middle: exactly one non-empty segment.
    Any,
}

/// Why a path is malformed, and how to write it instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError {
    pub message: String,
    pub help: String,
}

fn error(message: impl Into<String>, help: impl Into<String>) -> PathError {
    PathError {
        message: message.into(),
        help: help.into(),
    }
}

/// Parses one entry of a route's `paths`.
pub fn parse_path(text: &str) -> Result<PathKind, PathError> {
    let Some(rest) = text.strip_prefix('/') else {
        let fixed = if text.is_empty() {
            "/".to_string()
        } else {
            format!("/{text}")
        };
        return Err(error(
            format!("path `{text}` does not start with `/`"),
            format!("paths are absolute: write `{fixed}`"),
        ));
    };
    if let Some(index) = text.find(['?', '#']) {
        return Err(error(
            format!("path `{text}` contains a query or fragment"),
            format!("routing looks at the path only: write `{}`", &text[..index]),
        ));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(error(
            format!("path `{text}` contains whitespace or a control character"),
            "write the path as it appears in a request line, percent-encoded",
        ));
    }
    let pieces: Vec<&str> = rest.split('/').collect();
    let last = pieces.len() - 1;
    if pieces[..last].iter().any(|piece| piece.is_empty()) {
        return Err(error(
            format!("path `{text}` has an empty segment (`//`)"),
            "remove the doubled `/`",
        ));
    }
    if !text.contains('*') {
        return Ok(PathKind::Exact);
    }
    let mut segments = Vec::new();
    let mut prefix = false;
    for (index, piece) in pieces.iter().enumerate() {
        match *piece {
            "*" if index == last => prefix = true,
            "*" => segments.push(Segment::Any),
            "" => {
                return Err(error(
                    format!("wildcard pattern `{text}` ends with `/`"),
                    "end it with `/*` to match everything below, or drop the trailing `/`",
                ))
            }
            _ if piece.contains("**") => {
                return Err(error(
                    format!("`**` in `{text}` is not a wildcard Juggler knows"),
                    "a trailing `/*` already matches any depth; a `*` in the middle matches one segment",
                ))
            }
            _ if piece.contains('*') => {
                return Err(error(
                    format!("`*` in `{text}` is not a whole segment (`{piece}`)"),
                    "`*` stands for a whole segment between slashes: write `/a/*`, not `/a*`",
                ))
            }
            literal => segments.push(Segment::Literal(literal.to_string())),
        }
    }
    Ok(PathKind::Wildcard(Pattern { segments, prefix }))
}

impl Pattern {
    /// Whether every path `other` matches is also matched by `self`.
    pub fn covers(&self, other: &Pattern) -> bool {
        let own = self.segments.len();
        let theirs = other.segments.len();
        let length_covered = if self.prefix {
            // `self` needs `own` segments and then a `/`: `other` supplies that with a further
            // segment, or with its own trailing `/*`.
            theirs > own || (theirs == own && other.prefix)
        } else {
            !other.prefix && theirs == own
        };
        length_covered
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(mine, their)| match mine {
                    // Every segment of a valid pattern is non-empty, so `*` covers it.
                    Segment::Any => true,
                    Segment::Literal(text) => *their == Segment::Literal(text.clone()),
                })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wildcard(text: &str) -> Pattern {
        match parse_path(text) {
            Ok(PathKind::Wildcard(pattern)) => pattern,
            other => panic!("{text} is not a wildcard: {other:?}"),
        }
    }

    #[test]
    fn parses_exact_paths_and_wildcards() {
        assert_eq!(parse_path("/api/users"), Ok(PathKind::Exact));
        assert_eq!(parse_path("/"), Ok(PathKind::Exact));
        assert_eq!(parse_path("/static/"), Ok(PathKind::Exact));
        assert_eq!(
            wildcard("/*"),
            Pattern {
                segments: vec![],
                prefix: true
            }
        );
        assert_eq!(
            wildcard("/wild/*/hello/*"),
            Pattern {
                segments: vec![
                    Segment::Literal("wild".into()),
                    Segment::Any,
                    Segment::Literal("hello".into())
                ],
                prefix: true
            }
        );
        assert_eq!(
            wildcard("/*/x"),
            Pattern {
                segments: vec![Segment::Any, Segment::Literal("x".into())],
                prefix: false
            }
        );
    }

    #[test]
    fn refuses_malformed_paths() {
        for bad in [
            "/a*", "*/x", "/**", "/a//b", "static/*", "", "/a/*/", "/a?x=1", "/a b",
        ] {
            assert!(parse_path(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn coverage_follows_the_matcher() {
        let all = wildcard("/*");
        let statics = wildcard("/static/*");
        let images = wildcard("/static/img/*");
        let one = wildcard("/static/*/x");
        let any_x = wildcard("/*/x");
        assert!(all.covers(&statics));
        assert!(all.covers(&any_x));
        assert!(statics.covers(&images));
        assert!(statics.covers(&one));
        assert!(!images.covers(&statics));
        assert!(!statics.covers(&all));
        assert!(any_x.covers(&wildcard("/*/x")));
        assert!(!any_x.covers(&wildcard("/a/x/*")));
        assert!(!wildcard("/a/*/c").covers(&wildcard("/a/b/*")));
        assert!(wildcard("/a/*/*").covers(&wildcard("/a/b/c/*")));
    }
}

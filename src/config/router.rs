//! The pieces the generated route matcher is made of: method sets and wildcard path patterns.
//!
//! The matcher itself is generated (`distributer::match_route`): a `match` on exact paths, then one
//! [`PathPattern::matches`] call per wildcard pattern in priority order. Nothing here allocates.

use std::fmt;

use http::Method;

/// A set of the standard HTTP methods as a bit set, so a route's methods are a `const`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MethodSet(pub u16);

/// The methods a route may name, in the order `Allow` lists them. Extension methods are refused at
/// build time, so a request with one never matches a route.
pub const METHOD_NAMES: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

impl MethodSet {
    pub const EMPTY: MethodSet = MethodSet(0);
    pub const ANY: MethodSet = MethodSet((1 << METHOD_NAMES.len()) - 1);
    pub const GET: MethodSet = MethodSet(1 << 0);
    pub const HEAD: MethodSet = MethodSet(1 << 1);
    pub const POST: MethodSet = MethodSet(1 << 2);
    pub const PUT: MethodSet = MethodSet(1 << 3);
    pub const DELETE: MethodSet = MethodSet(1 << 4);
    pub const CONNECT: MethodSet = MethodSet(1 << 5);
    pub const OPTIONS: MethodSet = MethodSet(1 << 6);
    pub const TRACE: MethodSet = MethodSet(1 << 7);
    pub const PATCH: MethodSet = MethodSet(1 << 8);

    /// The bit of a standard method; `EMPTY` for an extension method.
    pub fn of(method: &Method) -> MethodSet {
        match *method {
            Method::GET => Self::GET,
            Method::HEAD => Self::HEAD,
            Method::POST => Self::POST,
            Method::PUT => Self::PUT,
            Method::DELETE => Self::DELETE,
            Method::CONNECT => Self::CONNECT,
            Method::OPTIONS => Self::OPTIONS,
            Method::TRACE => Self::TRACE,
            Method::PATCH => Self::PATCH,
            _ => Self::EMPTY,
        }
    }

    /// The bit of a method name as written in `routes.toml` (upper case); `None` if unknown.
    pub fn from_name(name: &str) -> Option<MethodSet> {
        METHOD_NAMES
            .iter()
            .position(|known| *known == name)
            .map(|index| MethodSet(1 << index))
    }

    pub const fn union(self, other: MethodSet) -> MethodSet {
        MethodSet(self.0 | other.0)
    }

    pub const fn contains_all(self, other: MethodSet) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn contains(self, method: &Method) -> bool {
        let bit = Self::of(method);
        bit.0 != 0 && self.0 & bit.0 != 0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Method names in this set, in `METHOD_NAMES` order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        METHOD_NAMES
            .iter()
            .enumerate()
            .filter(move |(index, _)| self.0 & (1 << index) != 0)
            .map(|(_, name)| *name)
    }

    /// The value of an `Allow` header: `GET, HEAD`.
    pub fn allow_header(self) -> String {
        self.names().collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Debug for MethodSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::ANY {
            return f.write_str("*");
        }
        f.write_str(&self.allow_header())
    }
}

/// One `/`-separated piece of a wildcard pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// Matches exactly this text.
    Literal(&'static str),
    /// `*` in the middle of a pattern: exactly one non-empty segment.
    Any,
}

/// A wildcard path pattern such as `/static/*` or `/wild/*/hello/*`.
///
/// `segments` are matched one by one; a pattern ending in `/*` has `prefix` set and then also matches
/// anything after the last segment's `/` (`/static/*` matches `/static/` and `/static/a/b`, not
/// `/static`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathPattern {
    pub segments: &'static [Segment],
    pub prefix: bool,
}

impl PathPattern {
    pub fn matches(&self, path: &str) -> bool {
        let Some(mut rest) = path.strip_prefix('/') else {
            return false;
        };
        let last = self.segments.len();
        for (index, segment) in self.segments.iter().enumerate() {
            let (piece, after) = match rest.find('/') {
                Some(slash) => (&rest[..slash], Some(&rest[slash + 1..])),
                None => (rest, None),
            };
            let piece_matches = match segment {
                Segment::Literal(text) => piece == *text,
                Segment::Any => !piece.is_empty(),
            };
            if !piece_matches {
                return false;
            }
            match after {
                Some(after) => rest = after,
                // The path ends here: only a pattern with no more segments and no `/*` matches.
                None => return index + 1 == last && !self.prefix,
            }
            if index + 1 == last {
                // A `/` follows the last segment: `rest` is whatever comes after it.
                return self.prefix;
            }
        }
        // No segments at all: `/*` matches every path that starts with `/`.
        self.prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WILD: PathPattern = PathPattern {
        segments: &[
            Segment::Literal("wild"),
            Segment::Any,
            Segment::Literal("hello"),
        ],
        prefix: true,
    };
    const STATIC: PathPattern = PathPattern {
        segments: &[Segment::Literal("static")],
        prefix: true,
    };
    const ALL: PathPattern = PathPattern {
        segments: &[],
        prefix: true,
    };
    const MIDDLE: PathPattern = PathPattern {
        segments: &[Segment::Literal("a"), Segment::Any, Segment::Literal("c")],
        prefix: false,
    };

    #[test]
    fn trailing_star_matches_everything_below_the_prefix() {
        assert!(STATIC.matches("/static/"));
        assert!(STATIC.matches("/static/a"));
        assert!(STATIC.matches("/static/a/b/c"));
        assert!(!STATIC.matches("/static"));
        assert!(!STATIC.matches("/statics/a"));
        assert!(!STATIC.matches("/other/static/a"));
    }

    #[test]
    fn root_star_matches_every_absolute_path() {
        assert!(ALL.matches("/"));
        assert!(ALL.matches("/test.txt"));
        assert!(ALL.matches("/a/b/c"));
        assert!(!ALL.matches("*"));
        assert!(!ALL.matches(""));
    }

    #[test]
    fn middle_star_matches_exactly_one_segment() {
        assert!(WILD.matches("/wild/x/hello/"));
        assert!(WILD.matches("/wild/x/hello/y/z"));
        assert!(!WILD.matches("/wild/x/y/hello/z"));
        assert!(!WILD.matches("/wild//hello/z"));
        assert!(!WILD.matches("/wild/x/hello"));
        assert!(MIDDLE.matches("/a/b/c"));
        assert!(!MIDDLE.matches("/a/b/c/"));
        assert!(!MIDDLE.matches("/a/b/c/d"));
        assert!(!MIDDLE.matches("/a/c"));
    }

    #[test]
    fn method_sets_know_their_members() {
        let set = MethodSet::GET.union(MethodSet::POST);
        assert!(set.contains(&Method::GET));
        assert!(!set.contains(&Method::PUT));
        assert!(!MethodSet::ANY.contains(&Method::from_bytes(b"PURGE").unwrap()));
        assert_eq!(set.allow_header(), "GET, POST");
        assert_eq!(MethodSet::from_name("PATCH"), Some(MethodSet::PATCH));
        assert_eq!(MethodSet::from_name("get"), None);
        assert_eq!(MethodSet::ANY.names().count(), METHOD_NAMES.len());
    }
}

//! Config mistakes as a person reads them: `file:line:col: error: ...`, the source line with a
//! caret under the mistake, and a `help:` line saying how to fix it.

use std::fmt;
use std::ops::Range;

/// One input file, kept whole so that byte spans can be turned into `line:col` and a source excerpt.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as the operator wrote it (`routes.toml`, `juggler_config/load_balancer.toml`).
    pub name: String,
    pub text: String,
}

impl SourceFile {
    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = floor_char_boundary(&self.text, offset.min(self.text.len()));
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    /// `file:line` of a byte offset: the form generated code and `--print-routes` cite.
    pub fn location(&self, offset: usize) -> String {
        format!("{}:{}", self.name, self.line_col(offset).0)
    }

    fn line_text(&self, line: usize) -> &str {
        self.text.lines().nth(line - 1).unwrap_or("")
    }
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// One mistake in one input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Name of the file, as in [`SourceFile::name`].
    pub file: String,
    /// Where the mistake is: `None` for a file that could not be read at all.
    pub position: Option<Position>,
    /// What is wrong, one sentence.
    pub message: String,
    /// How to fix it.
    pub help: String,
}

/// `line:col` of a mistake plus what is needed to underline it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
    /// The whole source line, shown under the message.
    pub source_line: String,
    /// Characters to underline from `column` (at least 1, at most to the end of the line).
    pub width: usize,
}

impl Diagnostic {
    /// A mistake at `span` of `source`.
    pub fn at(source: &SourceFile, span: Range<usize>, message: String, help: String) -> Self {
        let (line, column) = source.line_col(span.start);
        let source_line = source.line_text(line).to_string();
        let rest_of_line = source_line.chars().count().saturating_sub(column - 1);
        let span_chars = source
            .text
            .get(span.clone())
            .map_or(1, |text| text.lines().next().unwrap_or("").chars().count());
        Diagnostic {
            file: source.name.clone(),
            position: Some(Position {
                line,
                column,
                source_line,
                width: span_chars.clamp(1, rest_of_line.max(1)),
            }),
            message,
            help,
        }
    }

    /// A mistake about a whole file (it cannot be read, or something is missing from it).
    pub fn file(file: &str, message: String, help: String) -> Self {
        Diagnostic {
            file: file.to_string(),
            position: None,
            message,
            help,
        }
    }

    /// `file:line:col` (or just `file` when there is no position).
    pub fn location(&self) -> String {
        match &self.position {
            Some(position) => format!("{}:{}:{}", self.file, position.line, position.column),
            None => self.file.clone(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: error: {}", self.location(), self.message)?;
        if let Some(position) = &self.position {
            let gutter = position.line.to_string();
            let pad = " ".repeat(gutter.len());
            writeln!(f, "{gutter} | {}", position.source_line)?;
            let indent: String = position
                .source_line
                .chars()
                .take(position.column - 1)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            writeln!(f, "{pad} | {indent}{}", "^".repeat(position.width))?;
        }
        write!(f, "help: {}", self.help)
    }
}

/// Every mistake found in the inputs, in file order: a build fails on all of them at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.0.push(diagnostic);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    /// Sorted by file and position, so the report reads top to bottom like the files.
    pub fn sorted(mut self) -> Self {
        self.0.sort_by_key(|diagnostic| {
            let position = diagnostic
                .position
                .as_ref()
                .map_or((0, 0), |position| (position.line, position.column));
            (diagnostic.file.clone(), position)
        });
        self
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for diagnostic in &self.0 {
            writeln!(f, "{diagnostic}")?;
        }
        let count = self.0.len();
        write!(
            f,
            "{count} error{} in the Juggler config",
            if count == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for Diagnostics {}

/// The known name closest to a misspelt one, if it is close enough to be a likely typo.
pub fn closest<'a>(wrong: &str, known: &[&'a str]) -> Option<&'a str> {
    let wrong_lower = wrong.to_ascii_lowercase();
    known
        .iter()
        .map(|candidate| {
            (
                edit_distance(&wrong_lower, &candidate.to_ascii_lowercase()),
                *candidate,
            )
        })
        .filter(|(distance, candidate)| *distance <= (candidate.len() / 3).max(1))
        // On a tie, a name the typo is the start of (`of` → `off`, not `on`).
        .min_by_key(|(distance, candidate)| {
            (
                *distance,
                !candidate.to_ascii_lowercase().starts_with(&wrong_lower),
            )
        })
        .map(|(_, candidate)| candidate)
}

/// `help:` text for a name that is not one of `known`.
pub fn did_you_mean(wrong: &str, known: &[&str]) -> String {
    let list = known
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match closest(wrong, known) {
        Some(name) => format!("did you mean `{name}`? (known: {list})"),
        None => format!("known names are {list}"),
    }
}

/// Edit distance counting a swap of two neighbours as one edit (`PSOT` → `POST`), on characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j]: distance between the first i characters of `a` and the first j of `b`.
    let mut rows = vec![vec![0; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let substitution = rows[i - 1][j - 1] + usize::from(a[i - 1] != b[j - 1]);
            let mut best = substitution.min(rows[i - 1][j] + 1).min(rows[i][j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> SourceFile {
        SourceFile {
            name: "routes.toml".to_string(),
            text: text.to_string(),
        }
    }

    #[test]
    fn positions_are_one_based_lines_and_character_columns() {
        let file = source("a = 1\nbé = \"x\"\n");
        assert_eq!(file.line_col(0), (1, 1));
        assert_eq!(file.line_col(6), (2, 1));
        // `=` after a two-byte character is column 4, not 5.
        assert_eq!(file.line_col(10), (2, 4));
    }

    #[test]
    fn rendering_shows_location_line_caret_and_help() {
        let file = source("[[route]]\nmetods = \"*\"\n");
        let diagnostic = Diagnostic::at(
            &file,
            10..16,
            "unknown key `metods`".to_string(),
            "did you mean `methods`?".to_string(),
        );
        assert_eq!(
            diagnostic.to_string(),
            "routes.toml:2:1: error: unknown key `metods`\n\
             2 | metods = \"*\"\n  \
             | ^^^^^^\n\
             help: did you mean `methods`?"
        );
    }

    #[test]
    fn typos_get_the_closest_known_name() {
        let known = ["connections_per_server", "servers"];
        assert_eq!(
            closest("conections_per_server", &known),
            Some("connections_per_server")
        );
        assert_eq!(closest("srevers", &known), Some("servers"));
        assert_eq!(closest("banana", &known), None);
        assert_eq!(closest("PSOT", &["GET", "POST", "PUT"]), Some("POST"));
        assert_eq!(closest("of", &["auto", "on", "off"]), Some("off"));
    }
}

//! `.dockerignore` with Docker's own semantics, ported from moby's
//! `patternmatcher`. Gitignore matchers differ in ways that matter here: a
//! Docker pattern is anchored at the context root (`foo` does not match
//! `a/foo`), `*` never crosses `/`, and a pattern matching a directory
//! excludes everything below it.

use otturnaut_core::{Error, Result};
use regex::Regex;

#[derive(Debug)]
struct Pattern {
    /// The cleaned pattern text, without the leading `!`.
    text: String,
    exclusion: bool,
    regex: Regex,
}

impl Pattern {
    fn new(text: String, exclusion: bool) -> Result<Self> {
        let regex = Regex::new(&to_regex(&text))
            .map_err(|e| Error::invalid(".dockerignore pattern", text.clone(), format!("not a valid pattern: {e}")))?;
        Ok(Pattern { text, exclusion, regex })
    }

    fn matches(&self, path: &str) -> bool {
        self.regex.is_match(path)
    }
}

/// The most patterns a `.dockerignore` may have: each one is a compiled
/// regex matched against every path of the context.
pub(crate) const MAX_PATTERNS: usize = 1000;

/// An ordered list of patterns; a later pattern overrides an earlier one.
#[derive(Debug, Default)]
pub(crate) struct DockerIgnore {
    patterns: Vec<Pattern>,
}

impl DockerIgnore {
    /// Parses the contents of a `.dockerignore` file. The file is the
    /// repository's, so an error names the line, never its text (a hostile
    /// repository could make it quote anything), and at most
    /// [`MAX_PATTERNS`] patterns are compiled.
    pub(crate) fn parse(contents: &str) -> Result<Self> {
        let mut ignore = DockerIgnore::default();
        let contents = contents.strip_prefix('\u{feff}').unwrap_or(contents);
        for (i, line) in contents.lines().enumerate() {
            // Comments are recognised before trimming, as Docker does.
            if line.starts_with('#') {
                continue;
            }
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if ignore.patterns.len() == MAX_PATTERNS {
                return Err(Error::failed(
                    "reading .dockerignore",
                    format!("more than {MAX_PATTERNS} patterns; refusing to compile them all"),
                ));
            }
            ignore.push(line).map_err(|_| {
                Error::failed(
                    "reading .dockerignore",
                    format!("line {} is not a valid pattern (its text is not shown)", i + 1),
                )
            })?;
        }
        Ok(ignore)
    }

    /// Appends one pattern, `!`-prefixed for an exception.
    pub(crate) fn push(&mut self, raw: &str) -> Result<()> {
        let (exclusion, body) = match raw.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, raw),
        };
        if body.is_empty() {
            return Err(Error::invalid(".dockerignore pattern", raw, "an exception needs a pattern after '!'"));
        }
        let mut text = clean(body);
        if text.len() > 1 && text.starts_with('/') {
            text.remove(0);
        }
        self.patterns.push(Pattern::new(text, exclusion)?);
        Ok(())
    }

    pub(crate) fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }

    /// True when `path` (relative, `/`-separated) or one of its parent
    /// directories is excluded and no later exception brings it back.
    pub(crate) fn is_excluded(&self, path: &str) -> bool {
        let parents: Vec<&str> = match path.rfind('/') {
            Some(i) => path[..i].split('/').collect(),
            None => Vec::new(),
        };
        let mut excluded = false;
        for pattern in &self.patterns {
            // Only a pattern that could flip the current verdict matters.
            if pattern.exclusion != excluded {
                continue;
            }
            let mut hit = pattern.matches(path);
            if !hit {
                for i in 1..=parents.len() {
                    if pattern.matches(&parents[..i].join("/")) {
                        hit = true;
                        break;
                    }
                }
            }
            if hit {
                excluded = !pattern.exclusion;
            }
        }
        excluded
    }

    /// Whether an excluded directory must still be walked because an
    /// exception pattern may bring back something inside it.
    pub(crate) fn may_include_below(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        self.patterns.iter().filter(|p| p.exclusion).any(|p| format!("{}/", p.text).starts_with(&prefix))
    }
}

/// Translates a cleaned Docker pattern into an anchored regex, exactly as
/// moby does: `*` and `?` stop at `/`, `**` spans directories.
fn to_regex(pattern: &str) -> String {
    let mut re = String::from("^");
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                if chars.peek() == Some(&'/') {
                    chars.next();
                }
                if chars.peek().is_none() {
                    re.push_str(".*");
                } else {
                    re.push_str("(.*/)?");
                }
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            '\\' => {
                re.push('\\');
                match chars.next() {
                    Some(next) => re.push(next),
                    None => re.push('\\'),
                }
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                re.push('\\');
                re.push(c);
            }
            _ => re.push(c),
        }
    }
    re.push('$');
    re
}

/// Lexical path cleaning as Go's `filepath.Clean` does it.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            _ => parts.push(part),
        }
    }
    let body = parts.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".to_owned(),
        (false, false) => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignore(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text).expect("valid .dockerignore")
    }

    #[test]
    fn patterns_are_anchored_at_the_root() {
        let ig = ignore("foo\n");
        assert!(ig.is_excluded("foo"));
        assert!(ig.is_excluded("foo/bar.txt"), "a directory takes its contents");
        assert!(!ig.is_excluded("a/foo"), "unlike .gitignore, no match below the root");
        assert!(!ig.is_excluded("foobar"));
    }

    #[test]
    fn stars_and_double_stars() {
        let ig = ignore("*.log\n**/*.tmp\ndocs/**\n");
        assert!(ig.is_excluded("a.log"));
        assert!(!ig.is_excluded("sub/a.log"), "* does not cross /");
        assert!(ig.is_excluded("x.tmp"));
        assert!(ig.is_excluded("a/b/c/x.tmp"));
        assert!(ig.is_excluded("docs/a/b"));
        assert!(!ig.is_excluded("docs"), "docs/** matches what is below docs");
        let ig = ignore("a/**/z\n?.txt\n");
        assert!(ig.is_excluded("a/z"));
        assert!(ig.is_excluded("a/b/c/z"));
        assert!(ig.is_excluded("b.txt"));
        assert!(!ig.is_excluded("bb.txt"));
    }

    #[test]
    fn later_exceptions_win_and_order_matters() {
        let ig = ignore("*.md\n!README.md\n");
        assert!(ig.is_excluded("NOTES.md"));
        assert!(!ig.is_excluded("README.md"));
        let ig = ignore("!README.md\n*.md\n");
        assert!(ig.is_excluded("README.md"));
    }

    #[test]
    fn exceptions_inside_an_excluded_directory() {
        let ig = ignore("www\n!www/keep.html\n");
        assert!(ig.is_excluded("www/drop.html"));
        assert!(!ig.is_excluded("www/keep.html"));
        assert!(ig.has_exceptions());
        assert!(ig.may_include_below("www"));
        assert!(!ig.may_include_below("other"));
    }

    #[test]
    fn comments_blank_lines_slashes_and_dots_are_normalised() {
        let ig = ignore("# comment\n\n  /build/  \n./tmp/../cache\n\u{feff}x\n");
        assert!(ig.is_excluded("build/out.o"));
        assert!(ig.is_excluded("cache"));
        assert!(!ig.is_excluded("tmp"));
        assert!(!ig.is_excluded("# comment"));
    }

    #[test]
    fn regex_metacharacters_are_literal_and_escapes_work() {
        let ig = ignore("a.b\nc+(d)\n\\*star\n");
        assert!(ig.is_excluded("a.b"));
        assert!(!ig.is_excluded("axb"), ". is literal");
        assert!(ig.is_excluded("c+(d)"));
        assert!(ig.is_excluded("*star"));
        assert!(!ig.is_excluded("xstar"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(DockerIgnore::parse("!\n").is_err());
        assert!(DockerIgnore::parse("[z-a]\n").is_err());
    }

    #[test]
    fn clean_matches_go() {
        for (input, want) in [("a//b/./c/", "a/b/c"), ("/../a", "/a"), ("../a", "../a"), ("a/..", "."), ("/", "/")] {
            assert_eq!(clean(input), want, "{input}");
        }
    }
}

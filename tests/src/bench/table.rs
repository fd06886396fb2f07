//! Markdown tables for the report: columns named once with their alignment,
//! rows as cells, written with the separators Markdown wants.

use std::fmt::Write as _;

/// A column: its name, left- or right-aligned (numbers go right).
#[derive(Debug, Clone, Copy)]
pub enum Col {
    L(&'static str),
    R(&'static str),
}

/// A Markdown table being filled.
#[derive(Debug)]
pub struct Table {
    cols: Vec<(String, bool)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(cols: &[Col]) -> Table {
        let cols = cols
            .iter()
            .map(|c| match *c {
                Col::L(name) => (name.to_owned(), false),
                Col::R(name) => (name.to_owned(), true),
            })
            .collect();
        Table { cols, rows: Vec::new() }
    }

    /// A table whose first column is left-aligned and the others, named at
    /// run time, right-aligned.
    pub fn with_first(first: &'static str, others: impl IntoIterator<Item = String>) -> Table {
        let mut cols = vec![(first.to_owned(), false)];
        cols.extend(others.into_iter().map(|name| (name, true)));
        Table { cols, rows: Vec::new() }
    }

    /// Adds a row; it must have one cell per column (see [`cells!`]).
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.cols.len(), "a row of {cells:?}");
        self.rows.push(cells);
    }

    /// The table, then a blank line.
    pub fn write(&self, w: &mut String) {
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            let cells: Vec<&str> = cells.collect();
            format!("| {} |", cells.join(" | "))
        };
        let _ = writeln!(w, "{}", line(&mut self.cols.iter().map(|(n, _)| n.as_str())));
        let seps: String = self.cols.iter().map(|(_, right)| if *right { "---:|" } else { "---|" }).collect();
        let _ = writeln!(w, "|{seps}");
        for row in &self.rows {
            let _ = writeln!(w, "{}", line(&mut row.iter().map(String::as_str)));
        }
        let _ = writeln!(w);
    }
}

/// The cells of a row, each value formatted with `Display`.
macro_rules! cells {
    ($($cell:expr),* $(,)?) => { vec![$($cell.to_string()),*] };
}
pub(crate) use cells;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_header_alignment_and_rows() {
        let mut t = Table::new(&[Col::L("Case"), Col::R("ms")]);
        t.row(cells!["a", 1.5]);
        let mut w = String::new();
        t.write(&mut w);
        assert_eq!(w, "| Case | ms |\n|---|---:|\n| a | 1.5 |\n\n");
    }
}

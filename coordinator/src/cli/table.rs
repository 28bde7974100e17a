//! An aligned text table for terminals, and cutting long cells. Every cell and header is
//! shown through [`sanitize::line`]: a control character or escape sequence in a value prints
//! as text (`\x1b`) and cannot move the cursor or break the alignment.

use super::sanitize;

/// Cells wider than this are cut with `…` (the last column never is).
const MAX_CELL: usize = 48;

/// An aligned text table.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Table {
        let headers: Vec<String> = headers.into_iter().map(Into::into).collect();
        Table {
            right: vec![false; headers.len()],
            headers,
            rows: Vec::new(),
        }
    }

    /// Right-aligns column `col` (numbers).
    pub fn right(mut self, col: usize) -> Table {
        if let Some(r) = self.right.get_mut(col) {
            *r = true;
        }
        self
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table, each line indented by `indent` spaces, ending with a newline.
    pub fn render(&self, indent: usize) -> String {
        let cols = self
            .headers
            .len()
            .max(self.rows.iter().map(Vec::len).max().unwrap_or(0));
        let last = cols.saturating_sub(1);
        let cell = |row: &[String], i: usize| -> String {
            let text = sanitize::line(row.get(i).map(String::as_str).unwrap_or(""));
            let text = text.as_ref();
            if i == last {
                text.to_owned()
            } else {
                truncate(text, MAX_CELL)
            }
        };
        let mut widths = vec![0usize; cols];
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, w) in widths.iter_mut().enumerate() {
                *w = (*w).max(cell(row, i).chars().count());
            }
        }
        let line = |row: &[String], out: &mut String| {
            let mut text = " ".repeat(indent);
            for (i, w) in widths.iter().enumerate() {
                let c = cell(row, i);
                let pad = w.saturating_sub(c.chars().count());
                let right = self.right.get(i).copied().unwrap_or(false);
                if i > 0 {
                    text.push_str("  ");
                }
                if right {
                    text.push_str(&" ".repeat(pad));
                    text.push_str(&c);
                } else {
                    text.push_str(&c);
                    if i != last {
                        text.push_str(&" ".repeat(pad));
                    }
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        let mut out = String::new();
        line(&self.headers, &mut out);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        line(&rule, &mut out);
        for row in &self.rows {
            line(row, &mut out);
        }
        out
    }
}

/// `text` cut to `max` characters, ending with `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_with_control_characters_print_as_text_and_stay_aligned() {
        let mut t = Table::new(["Name", "N"]).right(1);
        t.push(vec!["\x1b]0;pwned\x07evil\x1b[2J".into(), "1".into()]);
        t.push(vec!["tab\there\nnewline".into(), "22".into()]);
        let text = t.render(0);
        assert_eq!(
            text,
            "Name                          N\n\
             ---------------------------  --\n\
             \\x1b]0;pwned\\x07evil\\x1b[2J   1\n\
             tab\\x09here\\x0anewline       22\n"
        );
    }
}

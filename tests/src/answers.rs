//! Comparing result sets: numbers within a relative tolerance, text exactly,
//! row order kept.

use std::path::Path;

use anyhow::{bail, Context, Result};
use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

pub type Rows = Vec<Vec<Option<String>>>;

/// Reads a reference answer: pipe-separated, a header line, `NULL` for null.
pub fn read_answer(path: &Path) -> Result<(Vec<String>, Rows)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header = lines
        .next()
        .context("empty answer file")?
        .split('|')
        .map(str::to_string)
        .collect();
    let rows = lines
        .filter(|l| !l.is_empty())
        .map(|line| {
            line.split('|')
                .map(|v| {
                    if v == "NULL" {
                        None
                    } else {
                        Some(v.to_string())
                    }
                })
                .collect()
        })
        .collect();
    Ok((header, rows))
}

/// Arrow batches as text cells, the way the reference answers are written.
pub fn batch_rows(batches: &[RecordBatch]) -> Result<Rows> {
    let options = FormatOptions::default();
    let mut rows = Vec::new();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            rows.push(
                batch
                    .columns()
                    .iter()
                    .zip(&formatters)
                    .map(|(c, f)| (!c.is_null(row)).then(|| f.value(row).to_string()))
                    .collect(),
            );
        }
    }
    Ok(rows)
}

/// Whether two cells agree: both null, equal text, or numbers within `1e-6` relative.
pub fn cells_match(expected: Option<&str>, actual: Option<&str>) -> bool {
    match (expected, actual) {
        (None, None) => true,
        (Some(e), Some(a)) => {
            if e == a {
                return true;
            }
            match (e.trim().parse::<f64>(), a.trim().parse::<f64>()) {
                (Ok(x), Ok(y)) => {
                    let scale = x.abs().max(y.abs()).max(1e-9);
                    (x - y).abs() / scale <= 1e-6 || (x - y).abs() <= 1e-9
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// Compares two result sets; the error names the first difference.
pub fn compare(expected: &Rows, actual: &Rows) -> Result<()> {
    if expected.len() != actual.len() {
        bail!(
            "row count differs: expected {}, got {}",
            expected.len(),
            actual.len()
        );
    }
    for (i, (e, a)) in expected.iter().zip(actual).enumerate() {
        if e.len() != a.len() {
            bail!("row {i}: expected {} columns, got {}", e.len(), a.len());
        }
        for (j, (ev, av)) in e.iter().zip(a).enumerate() {
            if !cells_match(ev.as_deref(), av.as_deref()) {
                bail!("row {i} column {j}: expected {ev:?}, got {av:?}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_and_text() {
        assert!(cells_match(Some("1.0000000"), Some("1.0000001")));
        assert!(!cells_match(Some("1.0"), Some("1.1")));
        assert!(cells_match(Some("abc"), Some("abc")));
        assert!(!cells_match(Some("abc "), Some("abc")));
        assert!(!cells_match(None, Some("0")));
        assert!(cells_match(
            Some("5054096266.6828"),
            Some("5054096266.682800")
        ));
    }
}

//! TPC-H data generation with `tpchgen`, written as Parquet.
//!
//! Each table becomes a directory of several files so that scans split into tasks.
//! A table is written into a temporary directory beside its final place and renamed
//! into place when complete, so a reader (or a concurrent start) never sees half a
//! table; a table directory that exists is complete and is reused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatchReader;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow,
    SupplierArrow,
};

use crate::config::{FileFormat, TableConfig};
use crate::error::{Result, SqlError};

/// The eight TPC-H tables.
pub const TABLES: [&str; 8] = [
    "customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier",
];

/// Rows per generated file; tables are split into at least 2 and at most 16 files.
const ROWS_PER_FILE: f64 = 100_000.0;

/// Directory holding the data of one scale factor.
pub fn dataset_dir(data_dir: &Path, scale_factor: f64) -> PathBuf {
    data_dir.join("tpch").join(format!("sf{scale_factor}"))
}

/// Generates any missing table of the dataset and returns the table declarations.
pub fn ensure_dataset(data_dir: &Path, scale_factor: f64) -> Result<Vec<TableConfig>> {
    if !(scale_factor > 0.0 && scale_factor <= 1000.0) {
        return Err(SqlError::InvalidConfig {
            origin: "--tpch".into(),
            message: format!("scale factor must be in (0, 1000], not {scale_factor}"),
        });
    }
    let dir = dataset_dir(data_dir, scale_factor);
    std::fs::create_dir_all(&dir).map_err(|e| SqlError::io(&dir, e))?;
    let mut tables = Vec::new();
    for table in TABLES {
        let target = dir.join(table);
        if !target.is_dir() {
            generate_table(&dir, table, scale_factor)?;
        }
        tables.push(TableConfig {
            name: table.to_string(),
            format: FileFormat::Parquet,
            location: format!("{}/", target.display()),
            options: Default::default(),
        });
    }
    Ok(tables)
}

fn generate_table(dir: &Path, table: &str, scale_factor: f64) -> Result<()> {
    let failed = |message: String| SqlError::Generate {
        table: table.to_string(),
        message,
    };
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{table}-"))
        .tempdir_in(dir)
        .map_err(|e| SqlError::io(dir, e))?;
    let parts = file_count(table, scale_factor);
    // Two writer threads: generation is CPU-bound and the machine may be small.
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, parts as usize);
    let next = Arc::new(std::sync::atomic::AtomicI32::new(1));
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let next = Arc::clone(&next);
                let tmp = tmp.path().to_path_buf();
                scope.spawn(move || -> Result<()> {
                    loop {
                        let part = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if part > parts {
                            return Ok(());
                        }
                        let file = tmp.join(format!("part-{part:03}.parquet"));
                        let reader = batches(table, scale_factor, part, parts);
                        write_parquet(&file, reader).map_err(|e| SqlError::Generate {
                            table: table.to_string(),
                            message: format!("{}: {e}", file.display()),
                        })?;
                    }
                })
            })
            .collect();
        for handle in handles {
            handle
                .join()
                .map_err(|_| failed("a generator thread panicked".into()))??;
        }
        Ok(())
    })?;
    let tmp_path = tmp.keep();
    let target = dir.join(table);
    if let Err(e) = std::fs::rename(&tmp_path, &target) {
        // A concurrent start may have finished the same table first: keep theirs.
        let _ = std::fs::remove_dir_all(&tmp_path);
        if !target.is_dir() {
            return Err(SqlError::io(&target, e));
        }
    }
    Ok(())
}

fn file_count(table: &str, scale_factor: f64) -> i32 {
    let base_rows = match table {
        "lineitem" => 6_000_000.0,
        "orders" => 1_500_000.0,
        "partsupp" => 800_000.0,
        "part" => 200_000.0,
        "customer" => 150_000.0,
        "supplier" => 10_000.0,
        _ => return 1,
    };
    ((base_rows * scale_factor / ROWS_PER_FILE).ceil() as i32).clamp(2, 16)
}

pub(crate) fn batches(
    table: &str,
    sf: f64,
    part: i32,
    parts: i32,
) -> Box<dyn RecordBatchReader + Send> {
    match table {
        "lineitem" => Box::new(LineItemArrow::new(LineItemGenerator::new(sf, part, parts))),
        "orders" => Box::new(OrderArrow::new(OrderGenerator::new(sf, part, parts))),
        "customer" => Box::new(CustomerArrow::new(CustomerGenerator::new(sf, part, parts))),
        "part" => Box::new(PartArrow::new(PartGenerator::new(sf, part, parts))),
        "partsupp" => Box::new(PartSuppArrow::new(PartSuppGenerator::new(sf, part, parts))),
        "supplier" => Box::new(SupplierArrow::new(SupplierGenerator::new(sf, part, parts))),
        "nation" => Box::new(NationArrow::new(NationGenerator::new(sf, part, parts))),
        "region" => Box::new(RegionArrow::new(RegionGenerator::new(sf, part, parts))),
        other => unreachable!("not a TPC-H table: {other}"),
    }
}

fn write_parquet(
    path: &Path,
    reader: Box<dyn RecordBatchReader + Send>,
) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let schema: SchemaRef = reader.schema();
    let file = std::fs::File::create(path)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer = ArrowWriter::try_new(file, schema, Some(props))?;
    for batch in reader {
        writer.write(&batch?)?;
    }
    writer.close()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let tables = ensure_dataset(dir.path(), 0.001).unwrap();
        assert_eq!(tables.len(), 8);
        let lineitem = dataset_dir(dir.path(), 0.001).join("lineitem");
        let files = std::fs::read_dir(&lineitem).unwrap().count();
        assert_eq!(files, 2);
        let modified = std::fs::metadata(lineitem.join("part-001.parquet"))
            .unwrap()
            .modified()
            .unwrap();
        ensure_dataset(dir.path(), 0.001).unwrap();
        let again = std::fs::metadata(lineitem.join("part-001.parquet"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(
            modified, again,
            "existing table must be reused, not rewritten"
        );
        // No temporary directories are left behind.
        let leftovers = std::fs::read_dir(dataset_dir(dir.path(), 0.001))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn bad_scale_factor_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_dataset(dir.path(), -1.0).is_err());
    }
}

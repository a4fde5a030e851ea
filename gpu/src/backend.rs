//! Where kernels run: a CUDA device, or the host emulation of the same
//! kernels (`emulation/`), which the tests and the executor's
//! `gpu_emulation` setting use to run the GPU path on machines without one.
//!
//! Both take host columns laid out as Arrow buffers (values, validity
//! bitmap) and keep a stage's hash table where the kernels run until it is
//! read back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::device::Device;
use crate::error::{GpuError, Result};
use crate::program::{ColumnKind, ProgramSet};

/// Error flags of the kernels (FL_ERROR_* in kernels/common.cuh).
pub(crate) mod flags {
    pub const OVERFLOW: u32 = 1;
    pub const PROGRAM: u32 = 2;
    pub const TABLE_FULL: u32 = 4;
    pub const OUTPUT_FULL: u32 = 8;
}

/// What the flags say, in words.
pub(crate) fn describe_flags(error: u32) -> String {
    let mut parts = Vec::new();
    if error & flags::OVERFLOW != 0 {
        parts.push("an integer overflow");
    }
    if error & flags::PROGRAM != 0 {
        parts.push("a malformed row program");
    }
    if error & flags::TABLE_FULL != 0 {
        parts.push("a full hash table");
    }
    if error & flags::OUTPUT_FULL != 0 {
        parts.push("a full join output");
    }
    parts.join(", ")
}

/// Threads per block of every launch.
const BLOCK_THREADS: u32 = 256;
/// Most blocks of a launch (the kernels loop over the rows beyond).
const GRID_BLOCKS_MAX: u32 = 4096;

fn grid_for(rows: usize) -> u32 {
    (rows.div_ceil(BLOCK_THREADS as usize) as u32).clamp(1, GRID_BLOCKS_MAX)
}

/// One column of a chunk, as Arrow lays it out, offset already applied.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostColumn<'a> {
    pub values: &'a [u8],
    /// The validity bitmap, bit `i` for row `i`; `None`: all valid.
    pub validity: Option<&'a [u8]>,
    pub kind: ColumnKind,
}

/// The rows a launch folds in: a value per column of the stage's input, or
/// `None` for a column no program reads.
pub(crate) struct Chunk<'a> {
    pub rows: usize,
    pub columns: Vec<Option<HostColumn<'a>>>,
    /// Over a join: whether each column is the build side's (the others are
    /// the probe side's); empty otherwise.
    pub build_side: Vec<bool>,
}

/// Which rows of a chunk a launch folds in.
#[derive(Clone, Copy)]
pub(crate) enum Rows<'a> {
    /// Every row.
    All,
    /// A join's output: the pairs of a probe row and a build row.
    Pairs(&'a JoinPairs),
}

/// Row sides of a chunk's columns (FL_ROW_* in kernels/common.cuh).
pub(crate) mod side {
    pub const DIRECT: i32 = 0;
    pub const PROBE: i32 = 1;
    pub const BUILD: i32 = 2;
}

impl Rows<'_> {
    /// Rows of the launch.
    pub fn count(&self, chunk: &Chunk<'_>) -> usize {
        match self {
            Rows::All => chunk.rows,
            Rows::Pairs(pairs) => pairs.len(),
        }
    }

    /// Where each column's rows come from.
    pub fn sides(&self, chunk: &Chunk<'_>) -> Vec<i32> {
        (0..chunk.columns.len())
            .map(|c| match self {
                Rows::All => side::DIRECT,
                Rows::Pairs(_) if chunk.build_side.get(c) == Some(&true) => side::BUILD,
                Rows::Pairs(_) => side::PROBE,
            })
            .collect()
    }
}

impl Chunk<'_> {
    pub fn bytes(&self) -> u64 {
        self.columns
            .iter()
            .flatten()
            .map(|c| (c.values.len() + c.validity.map_or(0, <[u8]>::len)) as u64)
            .sum()
    }
}

/// The shape of a stage's hash table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TableShape {
    /// Slots, a power of two.
    pub capacity: usize,
    pub keys: usize,
    /// 64-bit accumulator words per slot.
    pub acc_width: usize,
}

impl TableShape {
    pub fn bytes(&self) -> u64 {
        (self.capacity * (4 + 4 + self.keys * 8 + self.acc_width * 8)) as u64
    }
}

/// A hash table read back: the slots' states, keys, key validity masks and
/// accumulators (see kernels/aggregate.cu).
#[derive(Debug, Default, Clone)]
pub(crate) struct Readback {
    pub state: Vec<u32>,
    pub keys: Vec<i64>,
    pub key_valid: Vec<u32>,
    pub acc: Vec<u64>,
}

/// Time and bytes of one stage on its device, reported apart.
#[derive(Debug, Default, Clone, Copy)]
pub struct Figures {
    pub launches: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub copy_in: Duration,
    pub kernel: Duration,
    pub copy_out: Duration,
}

impl Figures {
    pub fn add(&mut self, other: &Figures) {
        self.launches += other.launches;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.copy_in += other.copy_in;
        self.kernel += other.kernel;
        self.copy_out += other.copy_out;
    }
}

/// The device of a stage.
#[derive(Clone)]
pub(crate) enum Backend {
    Cuda(Arc<Device>),
    Emulated,
}

impl Backend {
    pub fn name(&self) -> String {
        match self {
            Backend::Cuda(device) => device.info().name.clone(),
            Backend::Emulated => "host emulation".to_string(),
        }
    }

    /// Leave to run a stage now, if the device is not running as many as it
    /// may ([`crate::device::STAGES_PER_DEVICE`]).
    pub fn try_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permits = match self {
            Backend::Cuda(device) => Arc::clone(&device.permits),
            Backend::Emulated => Arc::clone(emulated_permits()),
        };
        permits.try_acquire_owned().ok()
    }

    /// A zeroed hash table of `shape`, with the stage's programs loaded.
    pub fn aggregate_table(
        &self,
        shape: TableShape,
        meta: &[i32],
        programs: &ProgramSet,
    ) -> Result<AggregateTable> {
        match self {
            Backend::Emulated => Ok(AggregateTable::Emulated(Box::new(EmulatedTable::new(
                shape, meta, programs,
            )))),
            Backend::Cuda(device) => Ok(AggregateTable::Cuda(Box::new(
                crate::cuda::CudaTable::new(Arc::clone(device), shape, meta, programs)?,
            ))),
        }
    }

    /// The build side of an inner hash join on one integer key, where the
    /// kernels run.
    pub fn join_table(&self, build: HostColumn<'_>, build_rows: usize) -> Result<JoinTable> {
        match self {
            Backend::Emulated => Ok(JoinTable::Emulated(EmulatedJoin::new(build, build_rows))),
            Backend::Cuda(device) => Ok(JoinTable::Cuda(crate::cuda::CudaJoin::new(
                Arc::clone(device),
                build,
                build_rows,
            )?)),
        }
    }
}

/// A join's build side where the kernels run: its key and the chains of
/// rows per hash bucket (see kernels/join.cu).
pub(crate) enum JoinTable {
    Emulated(EmulatedJoin),
    Cuda(crate::cuda::CudaJoin),
}

impl JoinTable {
    /// The pairs of the probe rows and the build rows with equal keys.
    pub fn probe(&mut self, probe: HostColumn<'_>, probe_rows: usize) -> Result<JoinPairs> {
        match self {
            JoinTable::Emulated(join) => Ok(join.probe(probe, probe_rows)),
            JoinTable::Cuda(join) => Ok(JoinPairs::Cuda(join.probe(probe, probe_rows)?)),
        }
    }
}

/// A join's output: pairs of (probe row, build row), where the probe left
/// them (on a device they stay there for the aggregate kernel to read).
pub(crate) enum JoinPairs {
    Host { probe: Vec<i32>, build: Vec<i32> },
    Cuda(crate::cuda::DevicePairs),
}

impl JoinPairs {
    pub fn len(&self) -> usize {
        match self {
            JoinPairs::Host { probe, .. } => probe.len(),
            JoinPairs::Cuda(pairs) => pairs.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pairs, on the host.
    pub fn to_host(&self) -> Result<(Vec<i32>, Vec<i32>)> {
        match self {
            JoinPairs::Host { probe, build } => Ok((probe.clone(), build.clone())),
            JoinPairs::Cuda(pairs) => pairs.to_host(),
        }
    }
}

/// What folding a chunk in left.
#[derive(Debug)]
pub(crate) struct Folded {
    /// Groups in the table now.
    pub groups: usize,
    /// The chunk's rows (indices into the chunk) whose group found no slot:
    /// they were not folded, and must be, into an emptied table.
    pub overflow: Vec<i32>,
}

/// The emulated device's stage permits (one set per process). The host has
/// no device memory to share, so the bound is loose: stages run on the CPU
/// for "busy" only when this many run at once.
pub(crate) fn emulated_permits() -> &'static Arc<tokio::sync::Semaphore> {
    static PERMITS: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| Arc::new(tokio::sync::Semaphore::new(EMULATED_STAGES_MAX)))
}

const EMULATED_STAGES_MAX: usize = 64;

/// A stage's hash table where its kernels run.
pub(crate) enum AggregateTable {
    Emulated(Box<EmulatedTable>),
    Cuda(Box<crate::cuda::CudaTable>),
}

impl AggregateTable {
    /// Folds in the chunk's `rows`.
    pub fn fold(&mut self, chunk: &Chunk<'_>, rows: Rows<'_>) -> Result<Folded> {
        let (groups, overflow, error) = match self {
            AggregateTable::Emulated(table) => table.fold(chunk, rows)?,
            AggregateTable::Cuda(table) => table.fold(chunk, rows)?,
        };
        if error != 0 {
            return Err(GpuError::Kernel {
                what: describe_flags(error),
            });
        }
        Ok(Folded { groups, overflow })
    }

    pub fn shape(&self) -> TableShape {
        match self {
            AggregateTable::Emulated(table) => table.shape,
            AggregateTable::Cuda(table) => table.shape(),
        }
    }

    /// Keeps a copy of the table as it is now, for [`Self::restore`].
    pub fn checkpoint(&mut self) -> Result<()> {
        match self {
            AggregateTable::Emulated(table) => {
                table.saved = Some((table.table.clone(), table.groups));
                Ok(())
            }
            AggregateTable::Cuda(table) => table.checkpoint(),
        }
    }

    /// The table as the last checkpoint kept it.
    pub fn restore(&mut self) -> Result<()> {
        match self {
            AggregateTable::Emulated(table) => {
                let Some((saved, groups)) = table.saved.clone() else {
                    return Err(GpuError::Kernel {
                        what: "a restore without a checkpoint".into(),
                    });
                };
                table.table = saved;
                table.groups = groups;
                Ok(())
            }
            AggregateTable::Cuda(table) => table.restore(),
        }
    }

    /// Reads the table back and empties it.
    pub fn take(&mut self) -> Result<Readback> {
        match self {
            AggregateTable::Emulated(table) => Ok(table.take()),
            AggregateTable::Cuda(table) => table.take(),
        }
    }

    pub fn figures(&self) -> Figures {
        match self {
            AggregateTable::Emulated(table) => table.figures,
            AggregateTable::Cuda(table) => table.figures(),
        }
    }
}

extern "C" {
    fn flotilla_emulate_aggregate(
        grid: u32,
        block: u32,
        rows: i32,
        col_values: *const u64,
        col_validity: *const u64,
        col_kind: *const i32,
        col_side: *const i32,
        probe_rows: *const i32,
        build_rows: *const i32,
        meta: *const i32,
        programs: *const i32,
        int_consts: *const i64,
        float_consts: *const f64,
        capacity: i32,
        slot_state: *mut u32,
        slot_keys: *mut i64,
        slot_key_valid: *mut u32,
        acc: *mut u64,
        acc_width: i32,
        groups: *mut u32,
        overflow_rows: *mut i32,
        overflow_count: *mut u32,
        error: *mut u32,
    );
    fn flotilla_emulate_join_build(
        grid: u32,
        block: u32,
        rows: i32,
        key_values: *const u8,
        key_validity: *const u8,
        key_kind: i32,
        capacity: i32,
        heads: *mut i32,
        next: *mut i32,
    );
    fn flotilla_emulate_join_probe(
        grid: u32,
        block: u32,
        rows: i32,
        probe_values: *const u8,
        probe_validity: *const u8,
        probe_kind: i32,
        build_values: *const u8,
        build_validity: *const u8,
        build_kind: i32,
        capacity: i32,
        heads: *const i32,
        next: *const i32,
        out_probe: *mut i32,
        out_build: *mut i32,
        out_capacity: i32,
        out_count: *mut u32,
        error: *mut u32,
    );
}

/// The table of the host emulation, in host memory.
pub(crate) struct EmulatedTable {
    shape: TableShape,
    meta: Vec<i32>,
    programs: ProgramSet,
    table: Readback,
    groups: u32,
    /// The last checkpoint: the table and its group count.
    saved: Option<(Readback, u32)>,
    figures: Figures,
}

impl EmulatedTable {
    fn new(shape: TableShape, meta: &[i32], programs: &ProgramSet) -> Self {
        let mut table = Self {
            shape,
            meta: meta.to_vec(),
            programs: programs.clone(),
            table: Readback::default(),
            groups: 0,
            saved: None,
            figures: Figures::default(),
        };
        table.clear();
        table
    }

    fn clear(&mut self) {
        let s = self.shape;
        self.table = Readback {
            state: vec![0; s.capacity],
            keys: vec![0; s.capacity * s.keys.max(1)],
            key_valid: vec![0; s.capacity],
            acc: vec![0; s.capacity * s.acc_width.max(1)],
        };
        self.groups = 0;
    }

    fn fold(&mut self, chunk: &Chunk<'_>, selection: Rows<'_>) -> Result<(usize, Vec<i32>, u32)> {
        let started = Instant::now();
        let values: Vec<u64> = chunk
            .columns
            .iter()
            .map(|c| c.map_or(0, |c| c.values.as_ptr() as u64))
            .collect();
        let validity: Vec<u64> = chunk
            .columns
            .iter()
            .map(|c| c.and_then(|c| c.validity).map_or(0, |v| v.as_ptr() as u64))
            .collect();
        let kind: Vec<i32> = chunk
            .columns
            .iter()
            .map(|c| c.map_or(0, |c| c.kind as i32))
            .collect();
        let side = selection.sides(chunk);
        let rows = selection.count(chunk);
        let (probe_rows, build_rows) = match selection {
            Rows::All => (std::ptr::null(), std::ptr::null()),
            Rows::Pairs(JoinPairs::Host { probe, build }) => (probe.as_ptr(), build.as_ptr()),
            Rows::Pairs(JoinPairs::Cuda(_)) => {
                return Err(GpuError::Kernel {
                    what: "a device's join output in the host emulation".into(),
                })
            }
        };
        let mut overflow = vec![0i32; rows.max(1)];
        let (mut overflow_count, mut error) = (0u32, 0u32);
        let table = &mut self.table;
        let programs = &self.programs;
        // SAFETY: every pointer is to a live buffer of the sizes the kernel
        // reads: the columns hold the chunk's values (validity: rows/8 bytes
        // rounded up), the table `capacity` slots of the shape, the programs
        // and constants those `meta` names; nothing else touches them during
        // the call; a join's pairs index rows of the chunk's probe and build
        // columns, the overflow list holds one entry per row of the launch.
        unsafe {
            flotilla_emulate_aggregate(
                grid_for(rows),
                BLOCK_THREADS,
                rows as i32,
                values.as_ptr(),
                validity.as_ptr(),
                kind.as_ptr(),
                side.as_ptr(),
                probe_rows,
                build_rows,
                self.meta.as_ptr(),
                programs.code.as_ptr(),
                programs.int_consts.as_ptr(),
                programs.float_consts.as_ptr(),
                self.shape.capacity as i32,
                table.state.as_mut_ptr(),
                table.keys.as_mut_ptr(),
                table.key_valid.as_mut_ptr(),
                table.acc.as_mut_ptr(),
                self.shape.acc_width as i32,
                &mut self.groups,
                overflow.as_mut_ptr(),
                &mut overflow_count,
                &mut error,
            );
        }
        overflow.truncate(overflow_count as usize);
        self.figures.launches += 1;
        self.figures.bytes_in += chunk.bytes();
        self.figures.kernel += started.elapsed();
        Ok((self.groups as usize, overflow, error))
    }

    fn take(&mut self) -> Readback {
        let taken = std::mem::take(&mut self.table);
        self.figures.bytes_out += self.shape.bytes();
        self.clear();
        taken
    }
}

/// Capacity of a join's bucket array for `rows` build rows.
pub(crate) fn join_capacity(rows: usize) -> usize {
    (rows.max(1) * 2).next_power_of_two()
}

/// The host emulation's join build side: its key (copied) and chains.
pub(crate) struct EmulatedJoin {
    values: Vec<u8>,
    validity: Option<Vec<u8>>,
    kind: ColumnKind,
    capacity: usize,
    heads: Vec<i32>,
    next: Vec<i32>,
}

impl EmulatedJoin {
    fn new(build: HostColumn<'_>, build_rows: usize) -> Self {
        let capacity = join_capacity(build_rows);
        let mut join = Self {
            values: build.values.to_vec(),
            validity: build.validity.map(<[u8]>::to_vec),
            kind: build.kind,
            capacity,
            heads: vec![0i32; capacity],
            next: vec![0i32; build_rows.max(1)],
        };
        let validity = join.validity.as_ref().map_or(std::ptr::null(), Vec::as_ptr);
        // SAFETY: the key buffer holds the build rows' values; heads and next
        // are the sizes the kernel indexes (capacity buckets, one per build
        // row).
        unsafe {
            flotilla_emulate_join_build(
                grid_for(build_rows),
                BLOCK_THREADS,
                build_rows as i32,
                join.values.as_ptr(),
                validity,
                join.kind as i32,
                capacity as i32,
                join.heads.as_mut_ptr(),
                join.next.as_mut_ptr(),
            );
        }
        join
    }

    fn probe(&self, probe: HostColumn<'_>, probe_rows: usize) -> JoinPairs {
        let validity = |v: Option<&[u8]>| v.map_or(std::ptr::null(), <[u8]>::as_ptr);
        let mut out_capacity = probe_rows.max(1);
        loop {
            let mut out_probe = vec![0i32; out_capacity];
            let mut out_build = vec![0i32; out_capacity];
            let (mut count, mut error) = (0u32, 0u32);
            // SAFETY: as in `new`; the probe key holds probe_rows values and
            // the outputs hold out_capacity pairs.
            unsafe {
                flotilla_emulate_join_probe(
                    grid_for(probe_rows),
                    BLOCK_THREADS,
                    probe_rows as i32,
                    probe.values.as_ptr(),
                    validity(probe.validity),
                    probe.kind as i32,
                    self.values.as_ptr(),
                    validity(self.validity.as_deref()),
                    self.kind as i32,
                    self.capacity as i32,
                    self.heads.as_ptr(),
                    self.next.as_ptr(),
                    out_probe.as_mut_ptr(),
                    out_build.as_mut_ptr(),
                    out_capacity as i32,
                    &mut count,
                    &mut error,
                );
            }
            let count = count as usize;
            if count <= out_capacity {
                out_probe.truncate(count);
                out_build.truncate(count);
                return JoinPairs::Host {
                    probe: out_probe,
                    build: out_build,
                };
            }
            out_capacity = count;
        }
    }
}

/// The pairs of an inner join of two integer arrays, on `backend`.
pub(crate) fn join_on(
    backend: &Backend,
    build: &dyn arrow::array::Array,
    probe: &dyn arrow::array::Array,
) -> Result<(Vec<i32>, Vec<i32>)> {
    let build_bits = build.nulls().map(|n| n.inner().sliced());
    let probe_bits = probe.nulls().map(|n| n.inner().sliced());
    let b = join_key(build, build_bits.as_ref())?;
    let p = join_key(probe, probe_bits.as_ref())?;
    backend
        .join_table(b, build.len())?
        .probe(p, probe.len())?
        .to_host()
}

/// An integer array as a join's key column.
pub(crate) fn join_key<'a>(
    array: &'a dyn arrow::array::Array,
    bits: Option<&'a arrow::buffer::Buffer>,
) -> Result<HostColumn<'a>> {
    let kind = ColumnKind::of(array.data_type())
        .filter(|k| matches!(k, ColumnKind::I32 | ColumnKind::I64))
        .ok_or_else(|| {
            GpuError::unsupported(format!("a join key of type {}", array.data_type()))
        })?;
    let values =
        crate::stage::value_bytes(array).ok_or_else(|| GpuError::unsupported("a join key"))?;
    Ok(HostColumn {
        values,
        validity: bits.map(|b| b.as_slice()),
        kind,
    })
}

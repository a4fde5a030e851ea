//! The kernels on a CUDA device, through cudarc's driver API.
//!
//! A chunk's columns are packed into one pinned host staging buffer
//! (allocated without write-combining, so the host may read it too) and
//! copied in with one transfer; the hash table stays on the device until the
//! stage reads it back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{
    CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, PinnedHostSlice, PushKernelArg, ValidAsZeroBits,
};

use crate::backend::{flags, Chunk, Figures, HostColumn, JoinPairs, Readback, Rows, TableShape};
use crate::device::{Calibration, Device};
use crate::error::{GpuError, Result};
use crate::program::{ColumnKind, ProgramSet};

/// Column buffers start at this alignment in the staging buffer.
const ALIGN: usize = 256;
const BLOCK_THREADS: u32 = 256;
const GRID_BLOCKS_MAX: u32 = 4096;

fn config_for(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            (rows.div_ceil(BLOCK_THREADS as usize) as u32).clamp(1, GRID_BLOCKS_MAX),
            1,
            1,
        ),
        block_dim: (BLOCK_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn copy_in<T: DeviceRepr + Clone + Default>(
    device: &Device,
    values: &[T],
    what: &'static str,
) -> Result<CudaSlice<T>> {
    // A zero-length allocation is refused: one element stands for none.
    let padded;
    let values = if values.is_empty() {
        padded = vec![T::default()];
        &padded[..]
    } else {
        values
    };
    device
        .stream
        .clone_htod(values)
        .map_err(|e| GpuError::driver(what, e))
}

fn zeros<T: DeviceRepr + ValidAsZeroBits>(device: &Device, len: usize) -> Result<CudaSlice<T>> {
    device
        .stream
        .alloc_zeros::<T>(len.max(1))
        .map_err(|e| out_of_memory(device, (len.max(1) * std::mem::size_of::<T>()) as u64, e))
}

fn out_of_memory(device: &Device, needed_bytes: u64, error: impl std::fmt::Debug) -> GpuError {
    let free_bytes = device.free_bytes();
    if free_bytes < needed_bytes {
        GpuError::OutOfMemory {
            needed_bytes,
            free_bytes,
        }
    } else {
        GpuError::driver("cuMemAlloc", error)
    }
}

fn copy_out<T: DeviceRepr>(device: &Device, slice: &CudaSlice<T>) -> Result<Vec<T>> {
    let out = device
        .stream
        .clone_dtoh(slice)
        .map_err(|e| GpuError::driver("cuMemcpyDtoH", e))?;
    // A copy to pageable memory has finished when it returns; the stream is
    // synchronized anyway, so that what follows never reads it early.
    sync(device)?;
    Ok(out)
}

/// A chunk's columns on the device.
struct Staged {
    /// Every column's buffers, packed; the pointers below point into it, so
    /// it lives as long as they are used.
    _buffer: CudaSlice<u8>,
    values: CudaSlice<u64>,
    validity: CudaSlice<u64>,
    kind: CudaSlice<i32>,
    side: CudaSlice<i32>,
}

/// Reusable pinned host memory for the copies in.
#[derive(Default)]
struct Staging {
    pinned: Option<PinnedHostSlice<u8>>,
}

impl Staging {
    /// Packs the columns into pinned memory and copies them to the device.
    fn stage(
        &mut self,
        device: &Device,
        columns: &[Option<HostColumn<'_>>],
        sides: &[i32],
    ) -> Result<Staged> {
        let mut offsets = Vec::with_capacity(columns.len());
        let mut size = 0usize;
        for column in columns {
            let mut place = |bytes: Option<&[u8]>| {
                bytes.map(|b| {
                    let at = size;
                    size = (size + b.len()).div_ceil(ALIGN) * ALIGN;
                    at
                })
            };
            let values = place(column.map(|c| c.values));
            let validity = place(column.and_then(|c| c.validity));
            offsets.push((values, validity));
        }
        let size = size.max(ALIGN);
        if self.pinned.as_ref().is_none_or(|p| p.len() < size) {
            // Flags 0: page-locked, cached (write-combined memory is slow for
            // the host to read, and the host fills this buffer).
            // SAFETY: the memory is written before any of it is read.
            let pinned = unsafe {
                device
                    .ctx
                    .alloc_pinned_with_flags::<u8>(size.next_power_of_two(), 0)
            }
            .map_err(|e| GpuError::driver("cuMemHostAlloc", e))?;
            self.pinned = Some(pinned);
        }
        let Some(pinned) = self.pinned.as_mut() else {
            return Err(GpuError::driver("cuMemHostAlloc", "no staging buffer"));
        };
        let host = pinned
            .as_mut_slice()
            .map_err(|e| GpuError::driver("cuEventSynchronize", e))?;
        for (column, (values, validity)) in columns.iter().zip(&offsets) {
            if let (Some(column), Some(at)) = (column, values) {
                host[*at..*at + column.values.len()].copy_from_slice(column.values);
            }
            if let (Some(bits), Some(at)) = (column.and_then(|c| c.validity), validity) {
                host[*at..*at + bits.len()].copy_from_slice(bits);
            }
        }
        let mut buffer = zeros::<u8>(device, size)?;
        device
            .stream
            .memcpy_htod(&host[..size], &mut buffer)
            .map_err(|e| GpuError::driver("cuMemcpyHtoD", e))?;
        let (base, _read) = buffer.device_ptr(&device.stream);
        let address = |at: Option<usize>| at.map_or(0u64, |at| base + at as u64);
        let values: Vec<u64> = offsets.iter().map(|(v, _)| address(*v)).collect();
        let validity: Vec<u64> = offsets.iter().map(|(_, v)| address(*v)).collect();
        let kind: Vec<i32> = columns
            .iter()
            .map(|c| c.map_or(ColumnKind::I32 as i32, |c| c.kind as i32))
            .collect();
        drop(_read);
        Ok(Staged {
            values: copy_in(device, &values, "cuMemcpyHtoD")?,
            validity: copy_in(device, &validity, "cuMemcpyHtoD")?,
            kind: copy_in(device, &kind, "cuMemcpyHtoD")?,
            side: copy_in(device, sides, "cuMemcpyHtoD")?,
            _buffer: buffer,
        })
    }
}

/// A stage's hash table on the device.
pub(crate) struct CudaTable {
    device: Arc<Device>,
    shape: TableShape,
    meta: CudaSlice<i32>,
    code: CudaSlice<i32>,
    int_consts: CudaSlice<i64>,
    float_consts: CudaSlice<f64>,
    table: Slots,
    overflow_count: CudaSlice<u32>,
    error: CudaSlice<u32>,
    /// The last checkpoint's copy of the table, allocated at the first.
    saved: Option<Slots>,
    staging: Staging,
    figures: Figures,
}

/// A hash table's buffers on the device (see kernels/aggregate.cu): slot
/// states, keys, key validity masks, accumulators, and the group count.
struct Slots {
    state: CudaSlice<u32>,
    keys: CudaSlice<i64>,
    key_valid: CudaSlice<u32>,
    acc: CudaSlice<u64>,
    groups: CudaSlice<u32>,
}

impl Slots {
    fn zeroed(device: &Device, shape: TableShape) -> Result<Self> {
        Ok(Self {
            state: zeros(device, shape.capacity)?,
            keys: zeros(device, shape.capacity * shape.keys)?,
            key_valid: zeros(device, shape.capacity)?,
            acc: zeros(device, shape.capacity * shape.acc_width)?,
            groups: zeros(device, 1)?,
        })
    }

    /// Zeroes every buffer, on the device.
    fn clear(&mut self, device: &Device) -> Result<()> {
        let zero = |e| GpuError::driver("cuMemsetD8", e);
        let stream = &device.stream;
        stream.memset_zeros(&mut self.state).map_err(zero)?;
        stream.memset_zeros(&mut self.keys).map_err(zero)?;
        stream.memset_zeros(&mut self.key_valid).map_err(zero)?;
        stream.memset_zeros(&mut self.acc).map_err(zero)?;
        stream.memset_zeros(&mut self.groups).map_err(zero)?;
        Ok(())
    }

    /// Copies every buffer into `to`'s, on the device.
    fn copy_to(&self, to: &mut Slots, device: &Device) -> Result<()> {
        let copy = |e| GpuError::driver("cuMemcpyDtoD", e);
        let stream = &device.stream;
        stream
            .memcpy_dtod(&self.state, &mut to.state)
            .map_err(copy)?;
        stream.memcpy_dtod(&self.keys, &mut to.keys).map_err(copy)?;
        stream
            .memcpy_dtod(&self.key_valid, &mut to.key_valid)
            .map_err(copy)?;
        stream.memcpy_dtod(&self.acc, &mut to.acc).map_err(copy)?;
        stream
            .memcpy_dtod(&self.groups, &mut to.groups)
            .map_err(copy)?;
        Ok(())
    }
}

impl CudaTable {
    pub fn new(
        device: Arc<Device>,
        shape: TableShape,
        meta: &[i32],
        programs: &ProgramSet,
    ) -> Result<Self> {
        // The table and its checkpoint's copy.
        let needed = 2 * shape.bytes();
        let free = device.free_bytes();
        if needed > free / 2 {
            return Err(GpuError::OutOfMemory {
                needed_bytes: needed,
                free_bytes: free,
            });
        }
        let d = &device;
        Ok(Self {
            meta: copy_in(d, meta, "cuMemcpyHtoD")?,
            code: copy_in(d, &programs.code, "cuMemcpyHtoD")?,
            int_consts: copy_in(d, &programs.int_consts, "cuMemcpyHtoD")?,
            float_consts: copy_in(d, &programs.float_consts, "cuMemcpyHtoD")?,
            table: Slots::zeroed(d, shape)?,
            overflow_count: zeros(d, 1)?,
            error: zeros(d, 1)?,
            saved: None,
            staging: Staging::default(),
            figures: Figures::default(),
            shape,
            device,
        })
    }

    pub fn figures(&self) -> Figures {
        self.figures
    }

    pub fn shape(&self) -> TableShape {
        self.shape
    }

    /// Folds in a chunk's `selection` of rows: (groups in the table, rows
    /// that found no slot, error flags).
    pub fn fold(
        &mut self,
        chunk: &Chunk<'_>,
        selection: Rows<'_>,
    ) -> Result<(usize, Vec<i32>, u32)> {
        let device = Arc::clone(&self.device);
        let started = Instant::now();
        let staged = self
            .staging
            .stage(&device, &chunk.columns, &selection.sides(chunk))?;
        let launch_rows = selection.count(chunk);
        // A join's pairs: where the probe left them, or copied in.
        let host_pairs = match selection {
            Rows::Pairs(JoinPairs::Host { probe, build }) => Some((
                copy_in(&device, probe, "cuMemcpyHtoD")?,
                copy_in(&device, build, "cuMemcpyHtoD")?,
            )),
            _ => None,
        };
        let pairs = match (selection, &host_pairs) {
            (_, Some((probe, build))) => Some((probe, build)),
            (Rows::Pairs(JoinPairs::Cuda(pairs)), None) => Some((&pairs.probe, &pairs.build)),
            _ => None,
        };
        let mut overflow = zeros::<i32>(&device, launch_rows)?;
        self.overflow_count = zeros::<u32>(&device, 1)?;
        sync(&device)?;
        let copied = Instant::now();
        let rows = launch_rows as i32;
        let capacity = self.shape.capacity as i32;
        let acc_width = self.shape.acc_width as i32;
        let none = 0u64;
        let mut launch = device.stream.launch_builder(&device.aggregate);
        launch
            .arg(&rows)
            .arg(&staged.values)
            .arg(&staged.validity)
            .arg(&staged.kind)
            .arg(&staged.side);
        match pairs {
            Some((probe, build)) => launch.arg(probe).arg(build),
            None => launch.arg(&none).arg(&none),
        };
        launch
            .arg(&self.meta)
            .arg(&self.code)
            .arg(&self.int_consts)
            .arg(&self.float_consts)
            .arg(&capacity)
            .arg(&mut self.table.state)
            .arg(&mut self.table.keys)
            .arg(&mut self.table.key_valid)
            .arg(&mut self.table.acc)
            .arg(&acc_width)
            .arg(&mut self.table.groups)
            .arg(&mut overflow)
            .arg(&mut self.overflow_count)
            .arg(&mut self.error);
        // SAFETY: the arguments match flotilla_aggregate's parameters in
        // order and type (pointers as device addresses, ints as i32), and
        // every buffer is as large as the shape and the chunk say; the
        // overflow list has a slot per row of the launch.
        unsafe { launch.launch(config_for(launch_rows)) }
            .map_err(|e| GpuError::driver("cuLaunchKernel", e))?;
        let groups = copy_out(&device, &self.table.groups)?[0] as usize;
        let error = copy_out(&device, &self.error)?[0];
        let overflowed = copy_out(&device, &self.overflow_count)?[0] as usize;
        let mut overflow_rows = if overflowed > 0 {
            copy_out(&device, &overflow)?
        } else {
            Vec::new()
        };
        overflow_rows.truncate(overflowed);
        drop(staged);
        self.figures.launches += 1;
        self.figures.bytes_in += chunk.bytes();
        self.figures.copy_in += copied - started;
        self.figures.kernel += copied.elapsed();
        Ok((groups, overflow_rows, error))
    }

    /// Copies the table, on the device, for [`Self::restore`].
    pub fn checkpoint(&mut self) -> Result<()> {
        let device = Arc::clone(&self.device);
        if self.saved.is_none() {
            self.saved = Some(Slots::zeroed(&device, self.shape)?);
        }
        match &mut self.saved {
            Some(saved) => self.table.copy_to(saved, &device),
            None => Ok(()),
        }
    }

    /// The table as the last checkpoint copied it.
    pub fn restore(&mut self) -> Result<()> {
        let device = Arc::clone(&self.device);
        let Some(saved) = self.saved.as_ref() else {
            return Err(GpuError::Kernel {
                what: "a restore without a checkpoint".into(),
            });
        };
        saved.copy_to(&mut self.table, &device)?;
        // The error flags belong to the fold that failed.
        device
            .stream
            .memset_zeros(&mut self.error)
            .map_err(|e| GpuError::driver("cuMemsetD8", e))?;
        sync(&device)
    }

    /// Reads the table back and zeroes it on the device.
    pub fn take(&mut self) -> Result<Readback> {
        let device = Arc::clone(&self.device);
        let started = Instant::now();
        let read = Readback {
            state: copy_out(&device, &self.table.state)?,
            keys: copy_out(&device, &self.table.keys)?,
            key_valid: copy_out(&device, &self.table.key_valid)?,
            acc: copy_out(&device, &self.table.acc)?,
        };
        self.table.clear(&device)?;
        sync(&device)?;
        self.figures.bytes_out += self.shape.bytes();
        self.figures.copy_out += started.elapsed();
        Ok(read)
    }
}

fn sync(device: &Device) -> Result<()> {
    device
        .stream
        .synchronize()
        .map_err(|e| GpuError::driver("cuStreamSynchronize", e))
}

/// A join's build side on the device: its key and the chains of rows per
/// hash bucket, built once and probed by every chunk of the probe side.
pub(crate) struct CudaJoin {
    device: Arc<Device>,
    values: CudaSlice<u8>,
    validity: Option<CudaSlice<u8>>,
    kind: i32,
    capacity: usize,
    heads: CudaSlice<i32>,
    next: CudaSlice<i32>,
}

/// A join's output on the device, for the aggregate kernel to read.
pub(crate) struct DevicePairs {
    device: Arc<Device>,
    pub(crate) probe: CudaSlice<i32>,
    pub(crate) build: CudaSlice<i32>,
    count: usize,
}

impl DevicePairs {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn to_host(&self) -> Result<(Vec<i32>, Vec<i32>)> {
        let mut probe = copy_out(&self.device, &self.probe)?;
        let mut build = copy_out(&self.device, &self.build)?;
        probe.truncate(self.count);
        build.truncate(self.count);
        Ok((probe, build))
    }
}

/// The validity bitmap as a kernel argument: its buffer, or a null pointer.
fn arg_or_null<'a, 'b>(
    launch: &mut cudarc::driver::LaunchArgs<'a>,
    bits: &'b Option<CudaSlice<u8>>,
    none: &'b u64,
) where
    'b: 'a,
{
    match bits {
        Some(bits) => launch.arg(bits),
        None => launch.arg(none),
    };
}

impl CudaJoin {
    pub fn new(device: Arc<Device>, build: HostColumn<'_>, build_rows: usize) -> Result<Self> {
        let capacity = crate::backend::join_capacity(build_rows);
        let needed = (build.values.len()
            + build.validity.map_or(0, <[u8]>::len)
            + 4 * (capacity + build_rows)) as u64;
        let free = device.free_bytes();
        if needed > free / 2 {
            return Err(GpuError::OutOfMemory {
                needed_bytes: needed,
                free_bytes: free,
            });
        }
        let d = &device;
        let mut join = Self {
            values: copy_in(d, build.values, "cuMemcpyHtoD")?,
            validity: build
                .validity
                .map(|bits| copy_in(d, bits, "cuMemcpyHtoD"))
                .transpose()?,
            kind: build.kind as i32,
            capacity,
            heads: zeros::<i32>(d, capacity)?,
            next: zeros::<i32>(d, build_rows)?,
            device: Arc::clone(d),
        };
        let none = 0u64;
        let (rows, cap) = (build_rows as i32, capacity as i32);
        let mut launch = device.stream.launch_builder(&device.join_build);
        launch.arg(&rows).arg(&join.values);
        arg_or_null(&mut launch, &join.validity, &none);
        launch
            .arg(&join.kind)
            .arg(&cap)
            .arg(&mut join.heads)
            .arg(&mut join.next);
        // SAFETY: arguments as flotilla_join_build declares them; heads has
        // `capacity` buckets and next one slot per build row.
        unsafe { launch.launch(config_for(build_rows)) }
            .map_err(|e| GpuError::driver("cuLaunchKernel", e))?;
        sync(&device)?;
        Ok(join)
    }

    /// The pairs of probe rows and build rows with equal keys, left on the
    /// device.
    pub fn probe(&self, probe: HostColumn<'_>, probe_rows: usize) -> Result<DevicePairs> {
        let device = &self.device;
        let probe_values = copy_in(device, probe.values, "cuMemcpyHtoD")?;
        let probe_validity = probe
            .validity
            .map(|bits| copy_in(device, bits, "cuMemcpyHtoD"))
            .transpose()?;
        let none = 0u64;
        let (probe_kind, cap) = (probe.kind as i32, self.capacity as i32);
        let mut out_capacity = probe_rows.max(1);
        loop {
            let mut out_probe = zeros::<i32>(device, out_capacity)?;
            let mut out_build = zeros::<i32>(device, out_capacity)?;
            let mut count = zeros::<u32>(device, 1)?;
            let mut error = zeros::<u32>(device, 1)?;
            let (rows, out_cap) = (probe_rows as i32, out_capacity as i32);
            let mut launch = device.stream.launch_builder(&device.join_probe);
            launch.arg(&rows).arg(&probe_values);
            arg_or_null(&mut launch, &probe_validity, &none);
            launch.arg(&probe_kind).arg(&self.values);
            arg_or_null(&mut launch, &self.validity, &none);
            launch
                .arg(&self.kind)
                .arg(&cap)
                .arg(&self.heads)
                .arg(&self.next)
                .arg(&mut out_probe)
                .arg(&mut out_build)
                .arg(&out_cap)
                .arg(&mut count)
                .arg(&mut error);
            // SAFETY: arguments as flotilla_join_probe declares them; the
            // outputs hold out_capacity pairs.
            unsafe { launch.launch(config_for(probe_rows)) }
                .map_err(|e| GpuError::driver("cuLaunchKernel", e))?;
            let count = copy_out(device, &count)?[0] as usize;
            let flags_set = copy_out(device, &error)?[0] & !flags::OUTPUT_FULL;
            if flags_set != 0 {
                return Err(GpuError::Kernel {
                    what: crate::backend::describe_flags(flags_set),
                });
            }
            if count <= out_capacity {
                return Ok(DevicePairs {
                    device: Arc::clone(device),
                    probe: out_probe,
                    build: out_build,
                    count,
                });
            }
            out_capacity = count;
        }
    }
}

/// Measures the device: a 64 MiB copy in, and the aggregate kernel counting
/// eight million rows of one Int64 column, then one row (the launch's fixed
/// cost).
pub(crate) fn calibrate(device: &Arc<Device>) -> Result<Calibration> {
    let bytes = 64usize << 20;
    let data = vec![1u8; bytes];
    let column = HostColumn {
        values: &data,
        validity: None,
        kind: ColumnKind::I64,
    };
    let mut staging = Staging::default();
    // Once to warm up (allocations), once measured.
    staging.stage(device, &[Some(column)], &[0])?;
    sync(device)?;
    let started = Instant::now();
    let staged = staging.stage(device, &[Some(column)], &[0])?;
    sync(device)?;
    let copy = started.elapsed();
    drop(staged);

    // count(*) with no keys: filter_len 0, keys 0, one aggregate of kind
    // COUNT_ROWS at offset 0.
    let meta = [0, 0, 1, 0, 0, 0, 0];
    let shape = TableShape {
        capacity: 1,
        keys: 0,
        acc_width: 1,
    };
    let mut table = CudaTable::new(Arc::clone(device), shape, &meta, &ProgramSet::default())?;
    let rows = bytes / 8;
    table.fold(
        &Chunk {
            rows,
            columns: vec![Some(column)],
            build_side: Vec::new(),
        },
        Rows::All,
    )?;
    let big = table.figures();
    table.fold(
        &Chunk {
            rows: 1,
            columns: vec![Some(HostColumn {
                values: &data[..8],
                validity: None,
                kind: ColumnKind::I64,
            })],
            build_side: Vec::new(),
        },
        Rows::All,
    )?;
    let launch = table.figures().kernel - big.kernel;
    let kernel = big.kernel.saturating_sub(launch);
    Ok(Calibration {
        copy_in_bytes_per_second: bytes as f64 / copy.as_secs_f64().max(1e-9),
        kernel_rows_per_second: rows as f64 / kernel.as_secs_f64().max(1e-9),
        launch: launch.max(Duration::from_micros(5)),
    })
}

//! The prompt's cache in a memory-mapped temporary file, when it does not fit the budget.
//!
//! A [`Spill`] is an unnamed temporary file (it disappears with the process) mapped shared
//! into memory; [`Spill::tensor`] makes a CPU tensor whose storage *is* that mapping, so the
//! forward pass writes the residual components, keys and values into the file in place and
//! the attribution reads them from there — no copy is made. Dirty pages belong to the page
//! cache, not to the process: after each layer [`Spill::release`] drops them from the
//! process's resident set (the kernel writes them back and evicts them as it needs), and a
//! later read faults back in only the rows it touches.
//!
//! The directory is `RDLA_SPILL_DIR` when set, the system's temporary directory otherwise.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use burn::tensor::{DType, Tensor, TensorData};
use cubecl_environment::bytes::{
    AccessError, AccessPolicy, AllocationController, AllocationProperty, Bytes,
};

use crate::error::{ModelError, Result};

/// One spilled tensor's file and mapping.
#[derive(Debug, Clone)]
pub struct Spill {
    map: Arc<memmap2::MmapRaw>,
    bytes: usize,
}

/// The directory spill files are created in.
pub fn spill_dir() -> std::path::PathBuf {
    std::env::var_os("RDLA_SPILL_DIR")
        .filter(|d| !d.is_empty())
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir)
}

/// Spilling forced for every prompt on the CPU, whatever the budget: `RDLA_SPILL_CACHE=1` (read
/// once), or [`set_forced`]. CI runs the whole suite once this way, so every attribution is
/// also checked reading a spilled cache.
pub fn forced() -> bool {
    flag().load(Ordering::Relaxed)
}

/// Force (or stop forcing) every CPU prompt's cache to spill, process-wide (overrides
/// `RDLA_SPILL_CACHE`).
pub fn set_forced(on: bool) {
    flag().store(on, Ordering::Relaxed);
}

fn flag() -> &'static AtomicBool {
    static FORCED: OnceLock<AtomicBool> = OnceLock::new();
    FORCED
        .get_or_init(|| AtomicBool::new(std::env::var("RDLA_SPILL_CACHE").is_ok_and(|v| v == "1")))
}

impl Spill {
    /// A zero-filled `f32` tensor of `shape` stored in a new temporary file, and the file's
    /// handle. The file is sparse: untouched rows take no disk space.
    pub fn zeros<const D: usize>(shape: [usize; D]) -> Result<(Tensor<D>, Spill)> {
        let n: usize = shape.iter().product();
        let bytes = n
            .checked_mul(4)
            .ok_or_else(|| spill_error("size overflows"))?;
        let dir = spill_dir();
        let file = tempfile::tempfile_in(&dir)
            .map_err(|e| spill_error(format!("creating the file: {e}")))?;
        file.set_len(bytes.max(1) as u64).map_err(|e| {
            spill_error(format!(
                "making it {:.2} GiB: {e}",
                bytes as f64 / crate::memory::GIB
            ))
        })?;
        let map = memmap2::MmapOptions::new()
            .len(bytes.max(1))
            .map_raw(&file)
            .map_err(|e| spill_error(format!("mapping the file: {e}")))?;
        let spill = Spill {
            map: Arc::new(map),
            bytes,
        };
        let controller = MappedController {
            map: spill.map.clone(),
        };
        #[allow(unsafe_code)]
        // SAFETY: the mapping is `bytes` long (at least) and zero-filled by `set_len`, so every
        // byte is initialised.
        let data = unsafe { Bytes::from_controller(Box::new(controller), bytes) };
        let t = Tensor::<D>::from_data(
            TensorData::from_bytes(data, shape, DType::F32),
            &burn::tensor::Device::flex(),
        );
        Ok((t, spill))
    }

    /// The file's size.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drop the file's pages from this process's resident set (their contents stay in the
    /// file, through the page cache).
    pub fn release(&self) {
        #[allow(unsafe_code)]
        // SAFETY: a shared file mapping keeps its contents after `MADV_DONTNEED`: the next
        // access reads them back from the page cache or the file.
        let _ = unsafe {
            self.map
                .unchecked_advise(memmap2::UncheckedAdvice::DontNeed)
        };
    }
}

fn spill_error(what: impl std::fmt::Display) -> ModelError {
    ModelError::Spill {
        dir: spill_dir(),
        what: what.to_string(),
    }
}

/// A tensor's storage that is a shared file mapping.
struct MappedController {
    map: Arc<memmap2::MmapRaw>,
}

#[allow(unsafe_code)]
impl AllocationController for MappedController {
    fn alloc_align(&self) -> usize {
        // a mapping starts on a page
        4096
    }

    fn property(&self) -> AllocationProperty {
        AllocationProperty::File
    }

    unsafe fn memory_mut(
        &mut self,
        _policy: AccessPolicy,
    ) -> std::result::Result<&mut [MaybeUninit<u8>], AccessError> {
        // SAFETY: the mapping lives as long as `self.map`; it is reached only through this
        // controller, borrowed mutably here.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().cast(), self.map.len()) })
    }

    fn memory(
        &self,
        _policy: AccessPolicy,
    ) -> std::result::Result<&[MaybeUninit<u8>], AccessError> {
        // SAFETY: as above, borrowed shared here.
        Ok(unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast(), self.map.len()) })
    }
}

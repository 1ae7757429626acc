//! A file mapped read-only into memory, so a multi-gigabyte checkpoint is
//! read where it lies (the page cache) rather than copied into the heap.

use std::fs::File;
use std::path::Path;

/// The bytes of a file, mapped read-only. Derefs to `&[u8]`.
pub struct MappedFile {
    map: memmap2::Mmap,
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedFile")
            .field("len", &self.map.len())
            .finish()
    }
}

impl MappedFile {
    /// Maps `path`. An empty file maps to an empty slice.
    pub fn open(path: &Path) -> std::io::Result<MappedFile> {
        let file = File::open(path)?;
        // SAFETY: the mapping is read-only and private to this process; its
        // soundness rests on no one truncating or rewriting the file while
        // it is mapped — the same contract every checkpoint reader that
        // maps files (safetensors, llama.cpp) has. A model file being
        // replaced under a running server is an operator error; the bytes
        // read are then whatever the file holds, never memory outside it.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(MappedFile { map })
    }
}

impl std::ops::Deref for MappedFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

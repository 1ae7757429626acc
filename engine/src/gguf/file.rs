//! The GGUF container (llama.cpp's format, versions 2 and 3): a header,
//! typed metadata, tensor descriptions and the aligned tensor data. Read
//! from a mapped file; nothing is copied until a tensor is dequantized.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cake_kernels::MappedFile;

use super::quants::GgmlType;
use crate::EngineError;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Meta {
    Uint(u64),
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Meta>),
}

impl Meta {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Meta::Uint(v) => Some(v),
            Meta::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Meta::Float(v) => Some(v),
            Meta::Uint(v) => Some(v as f64),
            Meta::Int(v) => Some(v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Meta::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Meta::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Meta]> {
        match self {
            Meta::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where a tensor's data lies, and what it is.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml's order: `dims[0]` varies fastest (the reverse of PyTorch's).
    pub dims: Vec<usize>,
    /// ggml's type number (see [`GgmlType::from_id`]).
    pub type_id: u32,
    /// Byte range in the file.
    pub start: usize,
    pub len: usize,
}

impl TensorInfo {
    pub fn elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// The shape as PyTorch (and a Hugging Face checkpoint) writes it.
    pub fn torch_shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }

    pub fn type_name(&self) -> String {
        GgmlType::name_of(self.type_id)
    }
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: MappedFile,
    pub version: u32,
    pub meta: BTreeMap<String, Meta>,
    pub tensors: Vec<TensorInfo>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

/// Whether `path` is a GGUF file (by its first four bytes).
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    if !path.is_file() {
        return false;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == MAGIC
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                format!(
                    "truncated: {what} at byte {} needs {n} bytes, the file has {}",
                    self.at,
                    self.b.len()
                )
            })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn len(&mut self, what: &str) -> Result<usize, String> {
        let n = self.u64(what)?;
        // Every element takes at least a byte: a count beyond the file is
        // corrupt, and must not become a huge allocation.
        if n > (self.b.len() - self.at) as u64 {
            return Err(format!("{what}: count {n} exceeds the file"));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String, String> {
        let n = self.len(what)?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("{what}: not UTF-8"))
    }
    fn value(&mut self, ty: u32, key: &str) -> Result<Meta, String> {
        let fixed = |c: &mut Cursor, n: usize| c.take(n, key).map(|b| b.to_vec());
        Ok(match ty {
            0 => Meta::Uint(fixed(self, 1)?[0] as u64),
            1 => Meta::Int(fixed(self, 1)?[0] as i8 as i64),
            2 => {
                let b = fixed(self, 2)?;
                Meta::Uint(u16::from_le_bytes([b[0], b[1]]) as u64)
            }
            3 => {
                let b = fixed(self, 2)?;
                Meta::Int(i16::from_le_bytes([b[0], b[1]]) as i64)
            }
            4 => Meta::Uint(self.u32(key)? as u64),
            5 => Meta::Int(self.u32(key)? as i32 as i64),
            6 => Meta::Float(f32::from_bits(self.u32(key)?) as f64),
            7 => Meta::Bool(fixed(self, 1)?[0] != 0),
            8 => Meta::Str(self.string(key)?),
            9 => {
                let inner = self.u32(key)?;
                let n = self.len(key)?;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(inner, key)?);
                }
                Meta::Array(v)
            }
            10 => Meta::Uint(self.u64(key)?),
            11 => Meta::Int(self.u64(key)? as i64),
            12 => Meta::Float(f64::from_bits(self.u64(key)?)),
            other => return Err(format!("metadata `{key}` has unknown value type {other}")),
        })
    }
}

impl GgufFile {
    /// Maps and parses `path`.
    pub fn open(path: &Path) -> Result<GgufFile, EngineError> {
        let err = |reason: String| EngineError::Checkpoint {
            path: path.display().to_string(),
            reason,
        };
        let map = MappedFile::open(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let (version, meta, tensors) = parse(&map).map_err(err)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            version,
            meta,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&Meta> {
        self.meta.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of tensor `t` (its range was checked against the file).
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        &self.map[t.start..t.start + t.len]
    }
}

type Parsed = (u32, BTreeMap<String, Meta>, Vec<TensorInfo>);

fn parse(b: &[u8]) -> Result<Parsed, String> {
    let mut c = Cursor { b, at: 0 };
    if c.take(4, "magic")? != MAGIC {
        return Err("not a GGUF file (no GGUF magic)".into());
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(format!(
            "GGUF version {version} is not supported (2 and 3 are)"
        ));
    }
    let n_tensors = c.len("tensor count")?;
    let n_kv = c.len("metadata count")?;
    let mut meta = BTreeMap::new();
    for _ in 0..n_kv {
        let key = c.string("metadata key")?;
        let ty = c.u32(&key)?;
        let v = c.value(ty, &key)?;
        meta.insert(key, v);
    }
    let mut infos = Vec::with_capacity(n_tensors.min(1 << 16));
    for _ in 0..n_tensors {
        let name = c.string("tensor name")?;
        let n_dims = c.u32(&name)? as usize;
        if n_dims > 4 {
            return Err(format!("tensor {name}: {n_dims} dimensions (at most 4)"));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            dims.push(c.u64(&name)? as usize);
        }
        let type_id = c.u32(&name)?;
        let offset = c.u64(&name)?;
        infos.push((name, dims, type_id, offset));
    }
    let align = meta
        .get("general.alignment")
        .and_then(Meta::as_u64)
        .unwrap_or(DEFAULT_ALIGNMENT)
        .max(1) as usize;
    let data_start = c.at.div_ceil(align) * align;
    let mut tensors = Vec::with_capacity(infos.len());
    for (name, dims, type_id, offset) in infos {
        let n = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("tensor {name}: shape {dims:?} overflows"))?;
        let ty_name = GgmlType::name_of(type_id);
        // A type Cake cannot dequantize is an error only if it is used:
        // its length is then unknown, so it gets none.
        let len = match GgmlType::from_id(type_id) {
            Some(ty) => ty.bytes_for(n).ok_or_else(|| {
                format!(
                    "tensor {name} ({ty_name}): {n} elements is not a whole number of blocks of {}",
                    ty.block().0
                )
            })?,
            None => 0,
        };
        let start = data_start
            .checked_add(offset as usize)
            .filter(|s| s.checked_add(len).is_some_and(|e| e <= b.len()))
            .ok_or_else(|| {
                format!(
                    "truncated: tensor {name} ({ty_name}, {len} bytes at data offset {offset}) ends past the file's {} bytes",
                    b.len()
                )
            })?;
        tensors.push(TensorInfo {
            name,
            dims,
            type_id,
            start,
            len,
        });
    }
    Ok((version, meta, tensors))
}

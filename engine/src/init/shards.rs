//! Streaming safetensors writer: plans shards, writes each file's header
//! first (every size is known in advance), then the tensors one block at a
//! time, so memory stays at a few blocks whatever the model's size.
//!
//! Format: 8-byte little-endian header length, a JSON header (padded with
//! spaces to a multiple of 8) mapping names to dtype, shape and
//! `data_offsets`, then the raw little-endian data.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde_json::{Map, Value, json};

use super::weights::{BLOCK, TensorSpec, encode_block};
use super::{Dtype, InitError, io_err};

/// One output file and the tensors in it, in data order.
#[derive(Debug, Clone)]
pub(crate) struct Shard {
    pub file: String,
    pub tensors: Vec<TensorSpec>,
}

/// Splits `tensors` (in order) into files of at most `max_bytes` of data
/// each (a tensor larger than that gets a file of its own). One file is
/// `model.safetensors`; several follow Hugging Face's
/// `model-00001-of-00003.safetensors` naming.
pub(crate) fn plan(tensors: &[TensorSpec], dtype: Dtype, max_bytes: u64) -> Vec<Shard> {
    let mut groups: Vec<Vec<TensorSpec>> = Vec::new();
    let mut size = 0u64;
    for t in tensors {
        let bytes = t.numel() * dtype.size() as u64;
        match groups.last_mut() {
            Some(g) if size + bytes <= max_bytes => {
                g.push(t.clone());
                size += bytes;
            }
            _ => {
                groups.push(vec![t.clone()]);
                size = bytes;
            }
        }
    }
    let n = groups.len();
    groups
        .into_iter()
        .enumerate()
        .map(|(i, tensors)| Shard {
            file: if n == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{n:05}.safetensors", i + 1)
            },
            tensors,
        })
        .collect()
}

/// The header bytes of `shard`, length prefix and padding included.
pub(crate) fn header(shard: &Shard, dtype: Dtype) -> Result<Vec<u8>, InitError> {
    let mut map = Map::new();
    map.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut offset = 0u64;
    for t in &shard.tensors {
        let end = offset + t.numel() * dtype.size() as u64;
        map.insert(
            t.name.clone(),
            json!({ "dtype": dtype.safetensors_name(), "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut text =
        serde_json::to_vec(&Value::Object(map)).map_err(|e| InitError::Internal(e.to_string()))?;
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    Ok(out)
}

/// Total size of the file `shard` becomes.
pub(crate) fn file_bytes(shard: &Shard, dtype: Dtype) -> Result<u64, InitError> {
    let data: u64 = shard
        .tensors
        .iter()
        .map(|t| t.numel() * dtype.size() as u64)
        .sum();
    Ok(header(shard, dtype)?.len() as u64 + data)
}

/// Writes `shard` to `path`, calling `progress` with the bytes of tensor
/// data written since the last call.
pub(crate) fn write(
    shard: &Shard,
    dtype: Dtype,
    seed: u64,
    threads: usize,
    path: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<(), InitError> {
    let file = File::create(path).map_err(|e| io_err(path, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(&header(shard, dtype)?)
        .map_err(|e| io_err(path, e))?;
    let threads = threads.max(1);
    for t in &shard.tensors {
        let numel = t.numel();
        let blocks = numel.div_ceil(BLOCK as u64);
        let len_of = |b: u64| ((numel - b * BLOCK as u64).min(BLOCK as u64)) as usize;
        let mut next = 0u64;
        while next < blocks {
            let batch: Vec<u64> = (next..blocks.min(next + threads as u64)).collect();
            next += batch.len() as u64;
            let bufs: Vec<Vec<u8>> = if batch.len() == 1 {
                let mut buf = Vec::new();
                encode_block(t, seed, batch[0], len_of(batch[0]), dtype, &mut buf);
                vec![buf]
            } else {
                std::thread::scope(|s| {
                    let handles: Vec<_> = batch
                        .iter()
                        .map(|&b| {
                            s.spawn(move || {
                                let mut buf = Vec::new();
                                encode_block(t, seed, b, len_of(b), dtype, &mut buf);
                                buf
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().unwrap_or_default())
                        .collect()
                })
            };
            for (buf, &b) in bufs.iter().zip(&batch) {
                if buf.len() != len_of(b) * dtype.size() {
                    return Err(InitError::Internal(format!(
                        "a worker thread failed on {}",
                        t.name
                    )));
                }
                w.write_all(buf).map_err(|e| io_err(path, e))?;
                progress(buf.len() as u64);
            }
        }
    }
    w.flush().map_err(|e| io_err(path, e))?;
    let file = w.into_inner().map_err(|e| io_err(path, e.into_error()))?;
    file.sync_all().map_err(|e| io_err(path, e))?;
    Ok(())
}

/// `model.safetensors.index.json` for several shards.
pub(crate) fn index(shards: &[Shard], dtype: Dtype) -> Value {
    let mut weight_map = Map::new();
    let mut total = 0u64;
    for s in shards {
        for t in &s.tensors {
            weight_map.insert(t.name.clone(), Value::String(s.file.clone()));
            total += t.numel() * dtype.size() as u64;
        }
    }
    json!({ "metadata": { "total_size": total }, "weight_map": weight_map })
}

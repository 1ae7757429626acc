use crate::{KernelError, Result, error::shape_err};

/// Where a tensor's data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// Host memory; ops run multi-threaded on the CPU.
    #[default]
    Cpu,
}

impl Device {
    /// Parses `cpu` (the only device this build knows).
    pub fn parse(s: &str) -> Result<Device> {
        match s {
            "cpu" => Ok(Device::Cpu),
            other => Err(KernelError::Unavailable(other.to_string())),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
        }
    }
}

#[derive(Debug, Clone)]
enum Storage {
    Cpu(Vec<f32>),
}

/// A dense, row-major f32 tensor on one device.
#[derive(Debug, Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

impl Tensor {
    /// Wraps host data; `data.len()` must equal the product of `shape`.
    pub fn from_vec(data: Vec<f32>, shape: &[usize], device: Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(shape_err(
                "from_vec",
                format!("shape {shape:?} holds {n} values, data has {}", data.len()),
            ));
        }
        match device {
            Device::Cpu => Ok(Tensor {
                shape: shape.to_vec(),
                storage: Storage::Cpu(data),
            }),
        }
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize], device: Device) -> Tensor {
        let n: usize = shape.iter().product();
        match device {
            Device::Cpu => Tensor {
                shape: shape.to_vec(),
                storage: Storage::Cpu(vec![0.0; n]),
            },
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn device(&self) -> Device {
        match self.storage {
            Storage::Cpu(_) => Device::Cpu,
        }
    }

    /// Same data, new shape with the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != self.len() {
            return Err(shape_err(
                "reshape",
                format!("{:?} -> {shape:?} changes the element count", self.shape),
            ));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// A copy of the data in host memory.
    pub fn to_vec(&self) -> Vec<f32> {
        match &self.storage {
            Storage::Cpu(v) => v.clone(),
        }
    }

    /// Moves the data out into host memory (no copy on the CPU).
    pub fn into_vec(self) -> Vec<f32> {
        match self.storage {
            Storage::Cpu(v) => v,
        }
    }

    /// Host slice, when the tensor lives in host memory.
    pub fn as_slice(&self) -> Option<&[f32]> {
        match &self.storage {
            Storage::Cpu(v) => Some(v),
        }
    }

    /// Mutable host slice, when the tensor lives in host memory.
    pub fn as_mut_slice(&mut self) -> Option<&mut [f32]> {
        match &mut self.storage {
            Storage::Cpu(v) => Some(v),
        }
    }

    /// Rows `start..end` along the first dimension, copied.
    pub fn rows(&self, start: usize, end: usize) -> Result<Tensor> {
        let rows = self.shape.first().copied().unwrap_or(0);
        if start > end || end > rows {
            return Err(shape_err(
                "rows",
                format!("{start}..{end} out of {rows} rows"),
            ));
        }
        let row: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        match &self.storage {
            Storage::Cpu(v) => Ok(Tensor {
                shape,
                storage: Storage::Cpu(v[start * row..end * row].to_vec()),
            }),
        }
    }

    pub(crate) fn cpu(&self) -> &[f32] {
        match &self.storage {
            Storage::Cpu(v) => v,
        }
    }

    pub(crate) fn cpu_mut(&mut self) -> &mut [f32] {
        match &mut self.storage {
            Storage::Cpu(v) => v,
        }
    }
}

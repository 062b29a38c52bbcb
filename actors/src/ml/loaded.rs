//! Models loaded for inference, and each worker's cache of them.
//!
//! Loading a model (reading the file, building the network, for TorchScript
//! deserialising the graph) can cost more than predicting a small batch, so
//! each worker keeps the models it used last, bounded by a byte budget. A
//! tch `Tensor` is `Send` but not `Sync`: each worker holds its own copies,
//! and the cache never leaves its thread while a job runs.

use std::path::Path;

use serde::Serialize;
use tch::nn::{self, Module, ModuleT};
use tch::{CModule, Device, Tensor};
use uuid::Uuid;

use crate::error::{ErrorCode, JobError};
use crate::ml::cnn::{Cnn, CnnSpec};
use crate::ml::network;
use crate::ml::spec::ModelSpec;

/// A network ready for forward passes.
pub enum Net {
    /// mlq's own MLP, rebuilt from its spec and safetensors weights.
    Mlp {
        _vars: nn::VarStore,
        seq: nn::Sequential,
    },
    /// mlq's own CNN, rebuilt from its spec and safetensors weights.
    Cnn { _vars: nn::VarStore, net: Cnn },
    /// A user's TorchScript module.
    Script(CModule),
}

pub struct Loaded {
    net: Net,
    device: Device,
    /// What it holds in memory, about: its weights file's size, or its
    /// parameters' if larger.
    pub bytes: u64,
}

impl Loaded {
    pub fn mlp(spec: &ModelSpec, weights: &Path, device: Device) -> Result<Self, JobError> {
        let mut vars = nn::VarStore::new(device);
        let seq = network::mlp(
            &vars.root(),
            spec.input_width() as i64,
            &spec.hidden,
            spec.output_width() as i64,
        );
        let bytes = load_weights(&mut vars, weights)?;
        Ok(Self {
            net: Net::Mlp { _vars: vars, seq },
            device,
            bytes,
        })
    }

    pub fn cnn(spec: &CnnSpec, weights: &Path, device: Device) -> Result<Self, JobError> {
        let mut vars = nn::VarStore::new(device);
        let net = Cnn::new(
            &vars.root(),
            i64::from(spec.input.channels),
            &spec.filters,
            spec.classes.len() as i64,
        );
        let bytes = load_weights(&mut vars, weights)?;
        Ok(Self {
            net: Net::Cnn { _vars: vars, net },
            device,
            bytes,
        })
    }

    /// Loads a TorchScript file, in eval mode. A file that is not
    /// TorchScript is `model_invalid`, with libtorch's reason.
    pub fn script(path: &Path, device: Device) -> Result<Self, JobError> {
        crate::ml::torchscript::check(path)?;
        let mut module = CModule::load_on_device(path, device).map_err(|e| {
            JobError::new(
                ErrorCode::ModelInvalid,
                format!(
                    "not a TorchScript module (save it with torch.jit.save): {}",
                    first_line(&e.to_string())
                ),
            )
        })?;
        module.f_set_eval().map_err(|e| {
            JobError::new(
                ErrorCode::ModelInvalid,
                format!(
                    "the module cannot be put in eval mode: {}",
                    first_line(&e.to_string())
                ),
            )
        })?;
        let params: u64 = module
            .named_parameters()
            .map(|p| {
                p.iter()
                    .map(|(_, t)| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64)
                    .sum()
            })
            .unwrap_or(0);
        Ok(Self {
            net: Net::Script(module),
            device,
            bytes: params.max(file_size(path)),
        })
    }

    /// Runs `x` (on the CPU) through the network without gradients; the
    /// output comes back on the CPU. A module that throws, or returns
    /// something other than one tensor, is an error naming it.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, JobError> {
        tch::no_grad(|| {
            let x = x.f_to_device(self.device)?;
            let out = match &self.net {
                Net::Mlp { seq, .. } => seq.forward(&x),
                Net::Cnn { net, .. } => net.forward_t(&x, false),
                Net::Script(module) => module.forward_ts(&[x]).map_err(|e| {
                    JobError::new(
                        ErrorCode::ModelInvalid,
                        format!(
                            "the model failed on its input: {}",
                            first_line(&e.to_string())
                        ),
                    )
                })?,
            };
            Ok(out.f_to_device(Device::Cpu)?)
        })
    }
}

/// Loads mlq's own safetensors weights into the network `vars` was built
/// for; what they hold in memory, about: every variable (batch-norm
/// statistics too), or the file's size if larger.
fn load_weights(vars: &mut nn::VarStore, weights: &Path) -> Result<u64, JobError> {
    vars.load(weights).map_err(|e| {
        JobError::new(
            ErrorCode::ModelIncompatible,
            format!(
                "model weights do not fit the model spec: {}",
                first_line(&e.to_string())
            ),
        )
    })?;
    let held: u64 = vars
        .variables()
        .values()
        .map(|t| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64)
        .sum();
    Ok(held.max(file_size(weights)))
}

pub fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// libtorch's messages carry a C++ backtrace; the first line says what
/// happened.
pub fn first_line(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no reason given");
    crate::error::truncate(line.to_owned(), 1024)
}

/// How a worker's cache has done, for `/readyz`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub models: usize,
    pub bytes: u64,
    pub budget: u64,
    /// hits / (hits + misses); 0 before the first lookup.
    pub hit_rate: f64,
}

/// One worker's loaded models, least recently used first out.
#[derive(Default)]
pub struct ModelCache {
    budget: u64,
    /// Most recently used last.
    entries: Vec<(Uuid, Loaded)>,
    stats: CacheStats,
}

impl ModelCache {
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            entries: Vec::new(),
            stats: CacheStats {
                budget,
                ..CacheStats::default()
            },
        }
    }

    /// The model `id`, loaded by `load` if it is not cached. Models are
    /// immutable once registered, so an id never goes stale. `expected` is
    /// about what loading it takes (its weights file's size): room is made
    /// for that before loading, so the cache never holds its budget and a
    /// new model at once.
    pub fn get_or_load(
        &mut self,
        id: Uuid,
        expected: u64,
        load: impl FnOnce() -> Result<Loaded, JobError>,
    ) -> Result<&Loaded, JobError> {
        if let Some(i) = self.entries.iter().position(|(k, _)| *k == id) {
            self.stats.hits += 1;
            let entry = self.entries.remove(i);
            self.entries.push(entry);
        } else {
            self.stats.misses += 1;
            self.shrink_to(self.budget.saturating_sub(expected));
            let loaded = match load() {
                Ok(loaded) => loaded,
                Err(e) => {
                    self.refresh();
                    return Err(e);
                }
            };
            // Then room for what it really takes. One bigger than the whole
            // budget is used for this job and kept only until the next load.
            self.shrink_to(self.budget.saturating_sub(loaded.bytes));
            self.entries.push((id, loaded));
        }
        self.refresh();
        Ok(&self.entries.last().expect("just pushed").1)
    }

    /// Evicts the least recently used models until at most `bytes` are held.
    fn shrink_to(&mut self, bytes: u64) {
        while !self.entries.is_empty() && self.held() > bytes {
            // Dropping the entry frees its tensors (libtorch storage is
            // reference-counted, and nothing else holds them).
            drop(self.entries.remove(0));
            self.stats.evictions += 1;
        }
    }

    fn held(&self) -> u64 {
        self.entries.iter().map(|(_, m)| m.bytes).sum()
    }

    fn refresh(&mut self) {
        let s = &mut self.stats;
        s.models = self.entries.len();
        s.bytes = self.entries.iter().map(|(_, m)| m.bytes).sum();
        let lookups = s.hits + s.misses;
        s.hit_rate = if lookups == 0 {
            0.0
        } else {
            s.hits as f64 / lookups as f64
        };
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Drops every model (the worker is going away, or a test wants the
    /// memory back).
    pub fn clear(&mut self) {
        self.shrink_to(0);
        self.refresh();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn traced(dir: &Path, name: &str, width: i64) -> std::path::PathBuf {
        let w = Tensor::randn([width, 2], (Kind::Float, Device::Cpu));
        let module = CModule::create_by_tracing(
            "Linear",
            "forward",
            &[Tensor::zeros([1, width], (Kind::Float, Device::Cpu))],
            &mut |x| vec![x[0].matmul(&w)],
        )
        .unwrap();
        let path = dir.join(name);
        module.save(&path).unwrap();
        path
    }

    #[test]
    fn least_recently_used_goes_first_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        // Three models of ~40 kB in a 100 kB budget.
        let paths: Vec<_> = (0..3)
            .map(|i| traced(dir.path(), &format!("m{i}.pt"), 5000))
            .collect();
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let mut cache = ModelCache::new(100_000);
        let load = |i: usize| {
            let p = paths[i].clone();
            move || Loaded::script(&p, Device::Cpu)
        };
        cache.get_or_load(ids[0], 0, load(0)).unwrap();
        cache.get_or_load(ids[1], 0, load(1)).unwrap();
        cache.get_or_load(ids[0], 0, load(0)).unwrap(); // a hit: 1 is now oldest
        cache.get_or_load(ids[2], 0, load(2)).unwrap(); // evicts 1
        let s = cache.stats();
        assert_eq!(
            (s.hits, s.misses, s.evictions, s.models),
            (1, 3, 1, 2),
            "{s:?}"
        );
        assert!(s.bytes <= 100_000, "{s:?}");
        // 0 is still there: a hit.
        cache
            .get_or_load(ids[0], 0, || panic!("model 0 should be cached"))
            .unwrap();
        assert_eq!(cache.stats().hits, 2);
        // Room is made before a load, by the size expected: a model that
        // then fails to load leaves the stats true to what is held.
        let err = cache.get_or_load(Uuid::new_v4(), 100_000, || {
            Err(JobError::new(ErrorCode::ModelInvalid, "broken"))
        });
        assert!(err.is_err());
        let s = cache.stats();
        assert_eq!((s.models, s.bytes, s.misses), (0, 0, 4), "{s:?}");
        assert_eq!(s.evictions, 3, "{s:?}");
        let x = Tensor::ones([4, 5000], (Kind::Float, Device::Cpu));
        let out = cache
            .get_or_load(ids[2], 0, load(2))
            .unwrap()
            .forward(&x)
            .unwrap();
        assert_eq!(out.size(), [4, 2]);
    }

    #[test]
    fn a_file_that_is_not_torchscript_is_model_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.pt");
        std::fs::write(&path, b"definitely not a zip of pickles").unwrap();
        let err = Loaded::script(&path, Device::Cpu).err().unwrap();
        assert_eq!(err.code, ErrorCode::ModelInvalid);
        assert!(err.message.contains("TorchScript"), "{}", err.message);
        assert!(!err.message.contains('\n'));
    }
}

//! Evicting a model from a worker's cache really frees its memory: 20
//! models of 40 MB go through a cache that holds two, and the process's
//! resident memory ends within a bound of where it stood with two loaded.
//! (Its own test binary: no other test shares the process's memory.)

use mlq_actors::ml::loaded::{Loaded, ModelCache};
use tch::{CModule, Device, Kind, Tensor};
use uuid::Uuid;

const MODEL_BYTES: u64 = 40 << 20;
/// What growth is tolerated past the two cached models: the allocator's
/// slack. A leak of the evicted models would be 18 × 40 MB = 720 MB.
const BOUND: u64 = 60 << 20;

fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb << 10
}

#[test]
fn evicted_models_give_their_memory_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.pt");
    {
        // 10 M weights: a 40 MB module, its weights a constant of the graph.
        let w = Tensor::randn([1000, 10_000], (Kind::Float, Device::Cpu));
        let module = CModule::create_by_tracing(
            "Big",
            "forward",
            &[Tensor::zeros([2, 1000], (Kind::Float, Device::Cpu))],
            &mut |x| vec![x[0].matmul(&w)],
        )
        .unwrap();
        module.save(&path).unwrap();
    }
    let mut cache = ModelCache::new(2 * MODEL_BYTES + (1 << 20));
    let x = Tensor::ones([1, 1000], (Kind::Float, Device::Cpu));
    let load = |cache: &mut ModelCache| {
        // A new id each time: every load is a new copy, as for 20 models.
        let model = cache
            .get_or_load(
                Uuid::new_v4(),
                mlq_actors::ml::loaded::file_size(&path),
                || Loaded::script(&path, Device::Cpu),
            )
            .unwrap();
        assert_eq!(model.forward(&x).unwrap().size(), [1, 10_000]);
    };
    load(&mut cache);
    load(&mut cache);
    let two = rss();
    for _ in 0..18 {
        load(&mut cache);
    }
    let after = rss();
    let stats = cache.stats();
    assert_eq!(
        (stats.models, stats.evictions, stats.misses),
        (2, 18, 20),
        "{stats:?}"
    );
    println!(
        "RSS with two models cached {} MiB, after 20 loads {} MiB (bound +{} MiB)",
        two >> 20,
        after >> 20,
        BOUND >> 20
    );
    assert!(
        after <= two + BOUND,
        "RSS grew {} MiB past two cached models",
        (after - two) >> 20
    );
    cache.clear();
    let cleared = rss();
    println!("after clearing the cache {} MiB", cleared >> 20);
    assert!(
        cleared + MODEL_BYTES <= after,
        "clearing freed less than a model"
    );
}

//! What a processor written in Python or JavaScript costs beside its Rust
//! twin, all as
//! components in the host runtime: component size, compile time (no cache,
//! and loading from the compile cache), instantiate time (a fresh instance
//! configured: what a restart or a cold standby pays), linear memory per
//! instance, and records/s through `process_batch` on the same records.
//!
//! Run: `scripts/build-plugins.sh --python --js && cargo bench -p logstream-host --bench language_cost`
//! Options (env): `BENCH_BATCH` records per call (default 1,000),
//! `BENCH_SECONDS` per throughput measurement (default 1.0), `BENCH_ROUNDS`
//! (default 5; the languages interleaved, the median reported),
//! `BENCH_INSTANTIATIONS` (default 50).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use logstream_host::record::LogRecord;
use logstream_host::sample_logs::SampleLogs;
use logstream_host::wasm::{
    CompileCache, InstanceLimits, ModuleLoader, ProcessorModule, WasmEngine,
};

/// Distinct sample records cycled through.
const SAMPLE_RECORDS: usize = 65_536;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn component(dir: &str, name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2")
        .join(dir)
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-plugins.sh --python --js",
        path.display()
    );
    path
}

/// One language's build of a processor, measured.
struct Measured {
    size_bytes: usize,
    compile: Duration,
    from_cache: Duration,
    instantiate: Duration,
    memory_bytes: usize,
    module: ProcessorModule,
}

fn measure_build(path: &Path, config: &str, instantiations: usize) -> Measured {
    let bytes = std::fs::read(path).unwrap();
    let limits = InstanceLimits::default();
    let cold = ModuleLoader::new(WasmEngine::new(limits.clone()).unwrap(), None).unwrap();
    let started = Instant::now();
    cold.load(&bytes).expect("compiles");
    let compile = started.elapsed();
    // The cache: the first load compiles and stores, the second reads.
    let cache_dir = tempfile::tempdir().unwrap();
    let cached = ModuleLoader::new(
        WasmEngine::new(limits).unwrap(),
        Some(CompileCache::new(cache_dir.path())),
    )
    .unwrap();
    cached.load(&bytes).expect("compiles");
    let started = Instant::now();
    let module = cached.load(&bytes).expect("loads from the cache");
    let from_cache = started.elapsed();
    let mut times = Vec::with_capacity(instantiations);
    let mut memory_bytes = 0;
    for _ in 0..instantiations {
        let started = Instant::now();
        let mut instance = module.instantiate("bench").expect("instantiates");
        instance.configure(config).expect("configures");
        times.push(started.elapsed());
        memory_bytes = instance.memory_bytes();
    }
    times.sort();
    Measured {
        size_bytes: bytes.len(),
        compile,
        from_cache,
        instantiate: times[times.len() / 2],
        memory_bytes,
        module,
    }
}

/// Records/s of `module` over consecutive batches for `seconds`.
fn records_per_second(
    module: &ProcessorModule,
    config: &str,
    records: &[LogRecord],
    batch: usize,
    seconds: f64,
) -> f64 {
    let mut instance = module.instantiate("bench").unwrap();
    instance.configure(config).unwrap();
    let budget = Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let (mut start, mut processed) = (0, 0usize);
    while started.elapsed() < budget {
        if start + batch > records.len() {
            start = 0;
        }
        std::hint::black_box(
            instance
                .process_batch(&records[start..start + batch])
                .unwrap(),
        );
        start += batch;
        processed += batch;
    }
    processed as f64 / started.elapsed().as_secs_f64()
}

/// A twin of a Rust processor: its language and where its build lies
/// (under `target/wasm32-wasip2/`).
type Twin = (&'static str, &'static str);

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let batch: usize = env_or("BENCH_BATCH", 1_000);
    let seconds: f64 = env_or("BENCH_SECONDS", 1.0);
    let rounds: usize = env_or("BENCH_ROUNDS", 5);
    let instantiations: usize = env_or("BENCH_INSTANTIATIONS", 50);
    let records: Vec<LogRecord> = SampleLogs::new(42, 1).take(SAMPLE_RECORDS).collect();
    println!(
        "batch {batch} records, {seconds} s per throughput measurement, {rounds} rounds, median of {instantiations} instantiations"
    );
    println!("| processor | language | size | compile (no cache) | load from cache | instantiate + configure | linear memory | records/s | / Rust |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    // Each Rust processor beside its twins: (language, build directory).
    let twins: [(&str, &str, &[Twin]); 3] = [
        ("level_counter", "every=1000", &[("Python", "python")]),
        ("passthrough", "", &[("Python", "python")]),
        ("redactor", "", &[("JavaScript", "js")]),
    ];
    for (name, config, others) in twins {
        let mut builds = vec![(
            "Rust",
            measure_build(&component("plugin", name), config, instantiations),
        )];
        for (language, dir) in others {
            builds.push((
                language,
                measure_build(&component(dir, name), config, instantiations),
            ));
        }
        let mut rates = vec![Vec::new(); builds.len()];
        for _ in 0..rounds {
            for ((_, measured), rates) in builds.iter().zip(rates.iter_mut()) {
                rates.push(records_per_second(
                    &measured.module,
                    config,
                    &records,
                    batch,
                    seconds,
                ));
            }
        }
        let rates: Vec<f64> = rates.into_iter().map(median).collect();
        for ((language, measured), rate) in builds.iter().zip(&rates) {
            println!(
                "| {name} | {language} | {:.1} MB | {:.2} s | {:.1} ms | {:.2} ms | {:.1} MiB | {:.0} k | {:.0} % |",
                measured.size_bytes as f64 / 1e6,
                measured.compile.as_secs_f64(),
                measured.from_cache.as_secs_f64() * 1e3,
                measured.instantiate.as_secs_f64() * 1e3,
                measured.memory_bytes as f64 / (1024.0 * 1024.0),
                rate / 1e3,
                100.0 * rate / rates[0],
            );
        }
    }
}

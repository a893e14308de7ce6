//! Records/s through each example processor, via WebAssembly (the real
//! component in the host runtime) and natively (the same processor crate
//! driven by `logstream_sdk::Runtime`), on the same ~200-byte sample records.
//!
//! Run: `scripts/build-plugins.sh && cargo bench -p logstream-host --bench processor_throughput`
//! Options (env): `BENCH_BATCH` records per call (default 256),
//! `BENCH_SECONDS` per measurement (default 1.0), `BENCH_ROUNDS` (default 5).
//!
//! Each measurement processes batches for the given time on one thread and
//! reports records/s; the table gives the median of the rounds, native and
//! WASM interleaved so machine noise hits both alike, and the ratio.

use std::time::{Duration, Instant};

use logstream_host::record::LogRecord;
use logstream_host::sample_logs::SampleLogs;
use logstream_host::wasm::{InstanceLimits, ModuleLoader, ProcessorInstance, WasmEngine};
use logstream_sdk::{OwnedRecord, Processor, Runtime};

/// Distinct sample records cycled through (enough to defeat caching effects,
/// few enough to stay in memory).
const SAMPLE_RECORDS: usize = 65_536;

struct Settings {
    batch: usize,
    seconds: f64,
    rounds: usize,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let settings = Settings {
        batch: env_or("BENCH_BATCH", 256),
        seconds: env_or("BENCH_SECONDS", 1.0),
        rounds: env_or("BENCH_ROUNDS", 5),
    };
    let records: Vec<LogRecord> = SampleLogs::new(42, 1).take(SAMPLE_RECORDS).collect();
    let mean_bytes = records.iter().map(LogRecord::payload_bytes).sum::<usize>() / records.len();
    let plugin_dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/plugin");
    let engine = WasmEngine::new(InstanceLimits::default()).expect("engine");
    let loader = ModuleLoader::new(engine, None).expect("loader");

    println!(
        "batch {} records, {} s per measurement, {} rounds, mean record {mean_bytes} bytes",
        settings.batch, settings.seconds, settings.rounds
    );
    println!("| processor | native records/s | WASM records/s | WASM / native |");
    println!("|---|---:|---:|---:|");
    bench::<passthrough::Passthrough>("passthrough", "", &records, &loader, &plugin_dir, &settings);
    bench::<passthrough::Passthrough>(
        "passthrough",
        "mode=drop",
        &records,
        &loader,
        &plugin_dir,
        &settings,
    );
    bench::<level_counter::LevelCounter>(
        "level_counter",
        "every=1000",
        &records,
        &loader,
        &plugin_dir,
        &settings,
    );
    bench::<redactor::Redactor>("redactor", "", &records, &loader, &plugin_dir, &settings);
    bench::<dedup::Dedup>(
        "dedup",
        "window=10000",
        &records,
        &loader,
        &plugin_dir,
        &settings,
    );
}

fn bench<P: Processor>(
    name: &str,
    config: &str,
    records: &[LogRecord],
    loader: &ModuleLoader,
    plugin_dir: &std::path::Path,
    settings: &Settings,
) {
    let path = plugin_dir.join(format!("{name}.wasm"));
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-plugins.sh)", path.display()));
    let module = loader.load(&bytes).expect("module loads");
    let mut instance: ProcessorInstance = module.instantiate(name).expect("instantiate");
    instance.configure(config).expect("configure");
    let mut native = Runtime::<P>::new();
    native.configure(config).expect("configure");
    let sdk_records: Vec<OwnedRecord> = records.iter().map(to_sdk).collect();

    let mut native_rates = Vec::new();
    let mut wasm_rates = Vec::new();
    for _ in 0..settings.rounds {
        native_rates.push(measure(settings, records.len(), |range| {
            std::hint::black_box(
                native
                    .process_batch(&sdk_records[range])
                    .expect("native batch"),
            );
        }));
        wasm_rates.push(measure(settings, records.len(), |range| {
            std::hint::black_box(instance.process_batch(&records[range]).expect("wasm batch"));
        }));
    }
    let (native, wasm) = (median(native_rates), median(wasm_rates));
    let label = if config.is_empty() {
        name.to_string()
    } else {
        format!("{name} ({config})")
    };
    println!(
        "| {label} | {:.2} M | {:.2} M | {:.0} % |",
        native / 1e6,
        wasm / 1e6,
        100.0 * wasm / native
    );
}

/// Records/s of `run_batch` over consecutive batches for `settings.seconds`.
fn measure(
    settings: &Settings,
    available: usize,
    mut run_batch: impl FnMut(std::ops::Range<usize>),
) -> f64 {
    let budget = Duration::from_secs_f64(settings.seconds);
    let started = Instant::now();
    let (mut start, mut processed) = (0, 0usize);
    while started.elapsed() < budget {
        if start + settings.batch > available {
            start = 0;
        }
        run_batch(start..start + settings.batch);
        start += settings.batch;
        processed += settings.batch;
    }
    processed as f64 / started.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn to_sdk(record: &LogRecord) -> OwnedRecord {
    OwnedRecord {
        partition: record.partition,
        offset: record.offset,
        timestamp_ms: record.timestamp_ms,
        key: record.key.clone(),
        value: record.value.clone(),
        headers: record
            .headers
            .iter()
            .map(|h| logstream_sdk::Header {
                key: h.key.clone(),
                value: h.value.clone(),
            })
            .collect(),
    }
}

//! The process-wide wasmtime `Engine`: pooling allocator when the address space allows it,
//! epoch interruption driven by a ticker thread.

use crate::grants::MAX_MEMORY_BYTES;
use std::time::Duration;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the ticker advances the epoch; a runaway plugin overshoots its deadline by at most
/// about this much.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How the engine allocates instances, for `engine plugins list --verbose` and the benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    Pooling,
    /// The pool could not reserve its address space (some aarch64/riscv64 machines, tight
    /// `ulimit -v`), so instances are allocated on demand: slower to instantiate, same limits.
    OnDemand,
}

fn base_config() -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        .max_wasm_stack(1 << 20);
    config
}

/// Builds the engine, with a pool sized for `max_instances` concurrent plugin calls.
pub fn build(max_instances: u32) -> anyhow::Result<(Engine, Allocation)> {
    let n = max_instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        .total_core_instances(8 * n)
        .total_memories(2 * n)
        .total_tables(4 * n)
        .total_stacks(n)
        .max_memory_size(MAX_MEMORY_BYTES as usize)
        .max_component_instance_size(10 << 20)
        .max_core_instance_size(10 << 20)
        .linear_memory_keep_resident(2 << 20)
        .table_keep_resident(512 << 10)
        // Without the scan, every call ends by zeroing the first 2 MiB of its memory whether
        // it wrote them or not: half the cost of a short call. With it (Linux 6.7+), only the
        // pages the call wrote are reset; elsewhere the pool falls back to zeroing.
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut config = base_config();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let (engine, allocation) = match Engine::new(&config) {
        Ok(engine) => (engine, Allocation::Pooling),
        Err(e) => {
            tracing::warn!("pooling allocator unavailable ({e:#}); allocating instances on demand");
            (Engine::new(&base_config())?, Allocation::OnDemand)
        }
    };
    start_ticker(&engine);
    Ok((engine, allocation))
}

/// A dedicated thread (not a tokio task, so a busy runtime cannot starve it) that advances the
/// epoch until the engine is dropped.
fn start_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("engine-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .expect("cannot spawn the epoch ticker thread");
}

//! Looks for what an earlier call left in linear memory: the engine promises a fresh instance
//! per call, so a call must never find it.

/// A word no memory holds by chance; it is built in a local (a wasm local, not linear memory)
/// so that the scan does not find the code's own copy of it.
fn marker() -> u64 {
    std::hint::black_box(0x5eed_0fc0_ffee_u64).rotate_left(17) ^ 0xa5a5_5a5a_0123_4567
}

/// Written at the start of static data (`.bss`), where a reused memory image would keep it.
#[cfg(target_arch = "wasm32")]
static mut STATIC_WORDS: [u64; 1024] = [0; 1024];

/// Counts the words of the whole linear memory that hold the marker, then writes the marker
/// into static data, into a small heap block and into `grow_mib` MiB of freshly grown heap
/// (past the part of memory an allocator keeps resident between calls). Returns the count
/// found before writing.
#[cfg(target_arch = "wasm32")]
pub fn count_then_leave(grow_mib: usize) -> usize {
    let mark = marker();
    let end = core::arch::wasm32::memory_size::<0>() * 65536;
    // Skip the first words: address 0 is the null pointer to Rust.
    let found = (16..end)
        .step_by(8)
        .filter(|&address| {
            // SAFETY: every aligned address below memory.size is readable in wasm; the values
            // are only compared.
            unsafe { core::ptr::read_volatile(address as *const u64) == mark }
        })
        .count();
    // SAFETY: this plugin's calls are single-threaded; nothing else touches the array.
    unsafe {
        let words = &mut *core::ptr::addr_of_mut!(STATIC_WORDS);
        words.fill(mark);
        std::hint::black_box(&words);
    }
    let small = std::hint::black_box(vec![mark; 64]);
    let large = std::hint::black_box(vec![mark; grow_mib << 17]);
    std::mem::forget(small);
    std::mem::forget(large);
    found
}

#[cfg(not(target_arch = "wasm32"))]
pub fn count_then_leave(_grow_mib: usize) -> usize {
    let _ = marker();
    0
}

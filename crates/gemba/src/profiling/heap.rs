//! The heap view: a global allocator over the system one that samples allocations only while a
//! heap profile is being recorded (`/debug/pprof/heap?seconds=N`). Off, an allocation costs one
//! relaxed atomic load more than `System`, a free one more; on, every thread counts its allocated
//! bytes down and, each time about `SAMPLE_BYTES` have gone by, walks its stack (frame addresses
//! only, no symbols) into a preallocated table. Freed sampled blocks are found in a lock-free
//! address table, so the window ends with both views: bytes allocated during it by call site,
//! and the part of those still in use at its end. Symbols are resolved afterwards, outside the
//! allocator. Nothing in the sampling path allocates; an allocation made while a thread is
//! already sampling (the unwinder's own) goes straight to `System`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

/// Average allocated bytes between two samples (Go's default is 512 KiB).
pub const SAMPLE_BYTES: u64 = 512 * 1024;
/// Deepest stack kept per sample.
const MAX_DEPTH: usize = 48;
/// Distinct call stacks kept in one window; samples beyond it are counted as dropped.
const MAX_STACKS: usize = 4096;
/// Sampled blocks tracked for the in-use view (a power of two).
const LIVE_SLOTS: usize = 1 << 14;
/// Slots probed for one address.
const PROBES: usize = 8;

/// The process's allocator: `System`, sampled while a heap profile records.
pub struct Sampler;

#[global_allocator]
static GLOBAL: Sampler = Sampler;

/// Sampling on (set for the length of a window).
static SAMPLING: AtomicBool = AtomicBool::new(false);
/// Frees look up the live table (set from the first window's start until its report is taken).
static TRACKING: AtomicBool = AtomicBool::new(false);
/// Incremented at each window start so threads reset their countdown.
static EPOCH: AtomicU64 = AtomicU64::new(0);
/// Samples that found no room (stack table or live table full).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Addresses of live sampled blocks (0 = empty); `LIVE_META` holds their stack and weight.
static LIVE_KEYS: [AtomicUsize; LIVE_SLOTS] = [const { AtomicUsize::new(0) }; LIVE_SLOTS];

struct Stack {
    ips: [usize; MAX_DEPTH],
    depth: usize,
    alloc_objects: u64,
    alloc_bytes: u64,
}

struct Tables {
    stacks: Vec<Stack>,
    /// Per live slot: the stack index and the (objects, bytes) the sample stands for.
    live_meta: Vec<(u32, u64, u64)>,
}

static TABLES: Mutex<Option<Tables>> = Mutex::new(None);

thread_local! {
    /// Bytes left before this thread's next sample, and the window it belongs to.
    static COUNTDOWN: Cell<(u64, u64)> = const { Cell::new((0, u64::MAX)) };
    /// This thread is inside the sampler (its own allocations are not sampled).
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

fn slot_of(ptr: usize) -> usize {
    // Fibonacci hashing of the address (blocks are at least 8-aligned).
    ((ptr >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) & (LIVE_SLOTS - 1)
}

/// Forget `ptr` if it is a live sampled block.
fn forget(ptr: usize) {
    let start = slot_of(ptr);
    for i in 0..PROBES {
        let slot = (start + i) & (LIVE_SLOTS - 1);
        if LIVE_KEYS[slot].load(Ordering::Relaxed) == ptr
            && LIVE_KEYS[slot].compare_exchange(ptr, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            return;
        }
    }
}

/// Count `size` bytes against this thread's countdown; sample when it runs out.
fn account(ptr: usize, size: usize) {
    let epoch = EPOCH.load(Ordering::Relaxed);
    let Ok(hit) = COUNTDOWN.try_with(|c| {
        let (mut left, e) = c.get();
        if e != epoch {
            left = SAMPLE_BYTES;
        }
        let size = size as u64;
        if size < left {
            c.set((left - size, epoch));
            return 0;
        }
        // Each SAMPLE_BYTES boundary crossed stands for SAMPLE_BYTES allocated bytes.
        let over = size - left;
        let crossed = 1 + over / SAMPLE_BYTES;
        c.set((SAMPLE_BYTES - over % SAMPLE_BYTES, epoch));
        crossed
    }) else {
        return;
    };
    if hit == 0 {
        return;
    }
    if BUSY.try_with(|b| b.replace(true)).unwrap_or(true) {
        return;
    }
    record(ptr, size, hit);
    let _ = BUSY.try_with(|b| b.set(false));
}

fn record(ptr: usize, size: usize, crossed: u64) {
    let mut ips = [0usize; MAX_DEPTH];
    let mut depth = 0;
    // SAFETY: no other unwinding API is used concurrently on this thread (BUSY is set), and
    // the callback only copies addresses.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            ips[depth] = frame.ip() as usize;
            depth += 1;
            depth < MAX_DEPTH
        });
    }
    let bytes = crossed * SAMPLE_BYTES;
    let objects = (bytes / (size.max(1) as u64)).max(1);
    let mut guard = TABLES.lock();
    let Some(t) = guard.as_mut() else { return };
    if !SAMPLING.load(Ordering::Relaxed) {
        return;
    }
    // The sampler's own frames (trace, account, alloc) are kept here and dropped when the
    // stack is resolved.
    let found = t.stacks.iter().position(|s| s.depth == depth && s.ips[..depth] == ips[..depth]);
    let index = match found {
        Some(i) => i,
        None if t.stacks.len() < MAX_STACKS => {
            t.stacks.push(Stack { ips, depth, alloc_objects: 0, alloc_bytes: 0 });
            t.stacks.len() - 1
        }
        None => {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    t.stacks[index].alloc_objects += objects;
    t.stacks[index].alloc_bytes += bytes;
    let start = slot_of(ptr);
    for i in 0..PROBES {
        let slot = (start + i) & (LIVE_SLOTS - 1);
        if LIVE_KEYS[slot].compare_exchange(0, ptr, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            t.live_meta[slot] = (index as u32, objects, bytes);
            return;
        }
    }
    DROPPED.fetch_add(1, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` with the same arguments; the sampler only reads
// the returned address.
unsafe impl GlobalAlloc for Sampler {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if SAMPLING.load(Ordering::Relaxed) && !p.is_null() {
            account(p as usize, layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if SAMPLING.load(Ordering::Relaxed) && !p.is_null() {
            account(p as usize, layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if TRACKING.load(Ordering::Relaxed) {
            forget(ptr as usize);
        }
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if TRACKING.load(Ordering::Relaxed) {
            forget(ptr as usize);
        }
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if SAMPLING.load(Ordering::Relaxed) && !p.is_null() {
            account(p as usize, new_size);
        }
        p
    }
}

/// One call site's figures in a heap profile.
#[derive(Debug, Clone)]
pub struct Site {
    /// Function names, innermost first.
    pub frames: Vec<String>,
    pub alloc_objects: u64,
    pub alloc_bytes: u64,
    pub inuse_objects: u64,
    pub inuse_bytes: u64,
}

/// A finished heap window.
#[derive(Debug, Clone)]
pub struct HeapProfile {
    pub seconds: u64,
    pub sites: Vec<Site>,
    /// Samples lost because a table was full.
    pub dropped: u64,
}

/// Start a window: allocate the tables (before sampling is on), then switch sampling on.
pub fn start() {
    let tables = Tables { stacks: Vec::with_capacity(MAX_STACKS), live_meta: vec![(0, 0, 0); LIVE_SLOTS] };
    for k in LIVE_KEYS.iter() {
        k.store(0, Ordering::Relaxed);
    }
    DROPPED.store(0, Ordering::Relaxed);
    *TABLES.lock() = Some(tables);
    EPOCH.fetch_add(1, Ordering::Relaxed);
    TRACKING.store(true, Ordering::Release);
    SAMPLING.store(true, Ordering::Release);
}

/// End the window: switch sampling off, take the tables, resolve symbols.
pub fn stop(seconds: u64) -> HeapProfile {
    SAMPLING.store(false, Ordering::Release);
    let tables = TABLES.lock().take();
    // What is still live now is the in-use view; frees are no longer looked up after this.
    let live: Vec<(u32, u64, u64)> = match &tables {
        Some(t) => LIVE_KEYS
            .iter()
            .enumerate()
            .filter(|(_, k)| k.load(Ordering::Acquire) != 0)
            .map(|(i, _)| t.live_meta[i])
            .collect(),
        None => Vec::new(),
    };
    TRACKING.store(false, Ordering::Release);
    let dropped = DROPPED.load(Ordering::Relaxed);
    let Some(tables) = tables else { return HeapProfile { seconds, sites: Vec::new(), dropped } };
    let mut inuse = vec![(0u64, 0u64); tables.stacks.len()];
    for (index, objects, bytes) in live {
        if let Some(x) = inuse.get_mut(index as usize) {
            x.0 += objects;
            x.1 += bytes;
        }
    }
    let mut names: HashMap<usize, Vec<String>> = HashMap::new();
    let sites = tables
        .stacks
        .iter()
        .zip(inuse)
        .map(|(s, (inuse_objects, inuse_bytes))| Site {
            frames: resolve_stack(&s.ips[..s.depth], &mut names),
            alloc_objects: s.alloc_objects,
            alloc_bytes: s.alloc_bytes,
            inuse_objects,
            inuse_bytes,
        })
        .collect();
    HeapProfile { seconds, sites, dropped }
}

/// Function names of a stack, innermost first (an address inside inlined code gives its whole
/// inline chain), without the sampler's and allocator's own frames.
fn resolve_stack(ips: &[usize], names: &mut HashMap<usize, Vec<String>>) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    for &ip in ips {
        let chain = names.entry(ip).or_insert_with(|| {
            let mut chain = Vec::new();
            backtrace::resolve(ip as *mut std::ffi::c_void, |sym| {
                if let Some(n) = sym.name() {
                    chain.push(format!("{n:#}"));
                }
            });
            if chain.is_empty() {
                chain.push(format!("{ip:#x}"));
            }
            chain
        });
        all.extend(chain.iter().cloned());
    }
    // Drop everything up to the last frame inside the allocator machinery.
    let skip = all
        .iter()
        .take(24)
        .rposition(|n| {
            n.contains("profiling::heap::account")
                || n.contains("profiling::heap::record")
                || n.contains("profiling::heap::Sampler")
                || n.starts_with("backtrace::")
                || n.starts_with("__rust_")
                || n.starts_with("alloc::alloc::")
                || n.contains("__rdl_")
        })
        .map_or(0, |i| i + 1);
    all[skip.min(all.len())..].to_vec()
}

impl HeapProfile {
    /// The pprof protobuf (uncompressed) with Go's four heap sample types.
    pub fn to_pprof(&self) -> pprof::protos::Profile {
        use pprof::protos::{Function, Line, Location, Profile, Sample, ValueType};
        let mut strings: Vec<String> = vec![String::new()];
        let mut index: HashMap<String, i64> = HashMap::new();
        let mut intern = |s: &str| -> i64 {
            if let Some(&i) = index.get(s) {
                return i;
            }
            strings.push(s.to_string());
            let i = strings.len() as i64 - 1;
            index.insert(s.to_string(), i);
            i
        };
        let sample_type = ["alloc_objects", "alloc_space", "inuse_objects", "inuse_space"]
            .iter()
            .zip(["count", "bytes", "count", "bytes"])
            .map(|(t, u)| ValueType { ty: intern(t), unit: intern(u) })
            .collect();
        let mut functions: Vec<Function> = Vec::new();
        let mut locations: Vec<Location> = Vec::new();
        let mut location_of: HashMap<String, u64> = HashMap::new();
        let mut samples = Vec::new();
        for site in &self.sites {
            let mut ids = Vec::with_capacity(site.frames.len());
            for f in &site.frames {
                let id = match location_of.get(f) {
                    Some(&id) => id,
                    None => {
                        let id = locations.len() as u64 + 1;
                        let name = intern(f);
                        functions.push(Function { id, name, system_name: name, ..Default::default() });
                        locations.push(Location {
                            id,
                            line: vec![Line { function_id: id, ..Default::default() }],
                            ..Default::default()
                        });
                        location_of.insert(f.clone(), id);
                        id
                    }
                };
                ids.push(id);
            }
            samples.push(Sample {
                location_id: ids,
                value: vec![
                    site.alloc_objects as i64,
                    site.alloc_bytes as i64,
                    site.inuse_objects as i64,
                    site.inuse_bytes as i64,
                ],
                ..Default::default()
            });
        }
        let period_type = Some(ValueType { ty: intern("space"), unit: intern("bytes") });
        let default_sample_type = intern("alloc_space");
        let comment = intern(&format!(
            "gemba heap window of {} s, one sample per {} allocated bytes on average",
            self.seconds, SAMPLE_BYTES
        ));
        Profile {
            sample_type,
            sample: samples,
            location: locations,
            function: functions,
            string_table: strings,
            period_type,
            period: SAMPLE_BYTES as i64,
            duration_nanos: (self.seconds * 1_000_000_000) as i64,
            comment: vec![comment],
            default_sample_type,
            ..Default::default()
        }
    }

    /// A readable table: call sites by allocated bytes, with their in-use bytes.
    pub fn to_text(&self, top: usize) -> String {
        let mut sites: Vec<&Site> = self.sites.iter().collect();
        sites.sort_by_key(|s| std::cmp::Reverse(s.alloc_bytes));
        let total: u64 = sites.iter().map(|s| s.alloc_bytes).sum();
        let inuse: u64 = sites.iter().map(|s| s.inuse_bytes).sum();
        let mut out = format!(
            "heap window of {} s: ~{} allocated, ~{} of it still in use at the end ({} call sites, {} samples dropped; \
             one sample per {} KiB)\n\n{:>12} {:>12}  call site (innermost gemba/sheets frame, then its caller)\n",
            self.seconds,
            human(total),
            human(inuse),
            sites.len(),
            self.dropped,
            SAMPLE_BYTES / 1024,
            "allocated",
            "in use",
        );
        for s in sites.iter().take(top) {
            out.push_str(&format!("{:>12} {:>12}  {}\n", human(s.alloc_bytes), human(s.inuse_bytes), site_label(s)));
        }
        out
    }
}

/// The first frame of our own code and its caller, else the innermost frame.
fn site_label(s: &Site) -> String {
    let own = s.frames.iter().position(|f| ["gemba::", "sheets::", "kaizen::"].iter().any(|c| f.contains(c)));
    match own {
        Some(i) => match s.frames.get(i + 1) {
            Some(caller) => format!("{} <- {}", s.frames[i], caller),
            None => s.frames[i].clone(),
        },
        None => s.frames.first().cloned().unwrap_or_else(|| "?".into()),
    }
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window over a known allocation pattern: the big blocks kept are in use, the ones
    /// dropped are only allocated, and both come to about the bytes really allocated.
    #[test]
    fn window_counts_allocated_and_in_use_bytes() {
        #[inline(never)]
        fn keep_blocks(n: usize) -> Vec<Vec<u8>> {
            (0..n).map(|_| vec![1u8; 256 * 1024]).collect()
        }
        #[inline(never)]
        fn drop_blocks(n: usize) {
            for _ in 0..n {
                std::hint::black_box(vec![2u8; 256 * 1024]);
            }
        }
        start();
        let kept = keep_blocks(64);
        drop_blocks(64);
        let p = stop(1);
        drop(kept);
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let named = |f: &str, v: fn(&Site) -> u64| -> f64 {
            mib(p.sites.iter().filter(|s| s.frames.iter().any(|x| x.contains(f))).map(v).sum())
        };
        // 64 blocks of 256 KiB each way: one sample per 512 KiB, each standing for 512 KiB.
        let kept_alloc = named("keep_blocks", |s| s.alloc_bytes);
        let kept_inuse = named("keep_blocks", |s| s.inuse_bytes);
        let dropped_alloc = named("drop_blocks", |s| s.alloc_bytes);
        let dropped_inuse = named("drop_blocks", |s| s.inuse_bytes);
        assert!((12.0..=20.0).contains(&kept_alloc), "keep_blocks allocated {kept_alloc:.1} MiB");
        assert!((12.0..=20.0).contains(&kept_inuse), "keep_blocks in use {kept_inuse:.1} MiB");
        assert!((12.0..=20.0).contains(&dropped_alloc), "drop_blocks allocated {dropped_alloc:.1} MiB");
        assert_eq!(dropped_inuse, 0.0, "drop_blocks freed everything it allocated");
        let profile = p.to_pprof();
        assert_eq!(profile.sample_type.len(), 4);
        assert!(p.to_text(10).contains("keep_blocks"));
    }
}

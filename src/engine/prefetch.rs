//! Asking the CPU for memory ahead of its use, where the engine knows the next addresses long
//! before it reads them and a plain loop would wait on a cache miss each time.

/// Asks for the cache line holding `p` (a hint: it reads nothing and cannot fault).
#[inline]
pub(crate) fn prefetch_line<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch is a hint to the cache: it reads no memory and cannot fault,
        // whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Asks for the first two cache lines of `bytes` (a message's content rarely spans more).
#[inline]
pub(crate) fn prefetch_bytes(bytes: &[u8]) {
    for line in bytes.chunks(64).take(2) {
        prefetch_line(line.as_ptr());
    }
}

//! Differential: Juggler's HTTP/1.1 request-head parser against hyper's on the same bytes. They
//! must agree (the same request, the same refusal, or both waiting for more), except where Juggler
//! refuses on purpose what hyper let through (`juggler::fuzzing::compare_with_hyper`).
#![no_main]

use std::sync::OnceLock;

use juggler::fuzzing::compare_with_hyper;
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

fuzz_target!(|input: &[u8]| {
    // Small enough that the fuzzer reaches the size limit too.
    const MAX_HEAD: usize = 4096;
    if let Err(difference) = runtime().block_on(compare_with_hyper(input, MAX_HEAD)) {
        panic!("verdicts differ:\n{difference}");
    }
});

//! The chunked decoder on any bytes, whole and split at two fuzzer-chosen points: it must never
//! panic or loop, and how the bytes arrive must not change the outcome.
#![no_main]

use juggler::fuzzing::decode_chunked;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if input.len() < 2 {
        return;
    }
    let (cuts, body) = input.split_at(2);
    let whole = decode_chunked(&[body]);
    let a = usize::from(cuts[0]).min(body.len());
    let b = (a + usize::from(cuts[1])).min(body.len());
    let split = decode_chunked(&[&body[..a], &body[a..b], &body[b..]]);
    // A split can only delay a verdict the whole input reaches: an error or the end.
    match (&whole, &split) {
        (Ok(w), Ok(s)) => assert_eq!(w, s, "split changed the decoded body"),
        (Err(_), Err(_)) => {}
        _ => panic!("whole {whole:?} but split {split:?}"),
    }
});

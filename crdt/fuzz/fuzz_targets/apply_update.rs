//! Every update a client could send, applied to a stored document: must not panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| crdt::fuzzing::apply_update(data));

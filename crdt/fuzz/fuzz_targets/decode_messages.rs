//! Every frame a client could send: the codec and the payload checks must not panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| crdt::fuzzing::decode_messages(data));

//! Every update a client could send, applied to a stored document: must not panic.
//!
//! `crdt::doc` contains a panic inside `yrs` with `catch_unwind`, as the relay does (the update
//! is refused, the process carries on). libFuzzer's panic hook would abort on it anyway, before
//! the unwinding reaches that guard, and end the run at the first contained panic. So the hook is
//! replaced by one that only notes the panic: a panic that `crdt` does not contain still unwinds
//! out of the target, where libfuzzer-sys aborts and reports it as a crash, and memory errors are
//! AddressSanitizer's to report.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: {
        std::panic::set_hook(Box::new(|info| {
            if std::env::var_os("FUZZ_SHOW_PANICS").is_some() {
                eprintln!("panic (contained unless the run stops here): {info}");
            }
        }));
    },
    |data: &[u8]| crdt::fuzzing::apply_update(data)
);

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| secretfs::fuzz_targets::sealed_value(data));

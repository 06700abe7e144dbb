//! `sudo -E cargo run -p stage7`.

fn main() {}

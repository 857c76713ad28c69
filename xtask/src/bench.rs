//! `cargo xtask bench`: being written (issue 4).

pub(crate) fn run(_args: &[String]) -> Result<(), String> {
    Err("the benchmark harness is not written yet".into())
}

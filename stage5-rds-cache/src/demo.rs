pub async fn run(_a: crate::DataArgs, _e: std::path::PathBuf) -> Result<(), shop::BoxError> {
    Ok(())
}

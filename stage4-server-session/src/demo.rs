pub async fn run(
    _a: shop::store::redis::SessionArgs,
    _e: std::path::PathBuf,
) -> Result<(), shop::BoxError> {
    Ok(())
}
